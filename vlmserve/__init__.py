"""vlmserve: a self-hosted vision-language model server with an OpenAI-compatible API."""
