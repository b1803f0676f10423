"""The HTTP layer: routes, the chat request path, OpenAI's protocol and errors, access control."""
