"""``vlmserve route``: one OpenAI base URL in front of several model backends (LiteLLM)."""
