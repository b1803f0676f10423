"""Errors an engine raises, free of HTTP: the API layer maps them to OpenAI's error shape.

Engines and the request-preparation step raise these; ``vlmserve/api/errors.py`` turns each into
its status code and ``{"error": {...}}`` body in one place.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error an engine raises on purpose."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class RequestRejected(EngineError):
    """The engine cannot serve this request as asked (a 400); ``param`` names the field."""


class EngineStopping(EngineError):
    """The engine is shutting down and takes no more work (a 503)."""


class EngineFailed(EngineError):
    """The engine failed while serving the request (a 500; the message stays generic)."""
