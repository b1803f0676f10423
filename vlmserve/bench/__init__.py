"""``vlmserve bench``: a benchmark client for OpenAI-compatible servers with images."""
