"""Typed API errors and the one mapping from every failure to OpenAI's error shape.

Handlers raise these exceptions; engines raise :mod:`vlmserve.engine.errors`, which
:func:`as_api_error` maps to these. :func:`install_error_handlers` turns them, FastAPI's validation
errors, unknown routes and anything unexpected into ``{"error": {"message", "type", "param",
"code"}}`` with the right status. Unexpected exceptions answer a generic message; the detail goes
to the log only.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from vlmserve.engine.errors import EngineError, EngineFailed, EngineStopping, RequestRejected

logger = logging.getLogger(__name__)


class APIError(Exception):
    """Base of every error the API answers on purpose."""

    status_code = 500
    error_type = "internal_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped error object."""
        return error_body(self.message, self.error_type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        """Extra response headers (``Retry-After`` for 429 and 503)."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class BadRequestError(APIError):
    """The request is malformed or asks for something the model cannot do (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(APIError):
    """Missing or wrong API key (401)."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        """``WWW-Authenticate: Bearer``, the scheme the server expects (RFC 6750)."""
        return {"WWW-Authenticate": "Bearer"}


class NotFoundError(APIError):
    """Unknown model or route (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class RateLimitError(APIError):
    """A per-key limit was reached (429, with ``Retry-After``)."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class OverloadedError(APIError):
    """The server cannot take the request now: queue full, model loading, draining (503)."""

    status_code = 503
    error_type = "overloaded_error"
    default_code = "overloaded"


class RequestTimeoutError(APIError):
    """The request ran past its time limit (504)."""

    status_code = 504
    error_type = "timeout_error"
    default_code = "timeout"


class PayloadTooLargeError(APIError):
    """The request body is over the server's limit (413); the connection is closed after it."""

    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"

    def headers(self) -> dict[str, str]:
        """``Connection: close``: the rest of the body is never read, so the connection ends."""
        return {"Connection": "close"}


class InternalError(APIError):
    """Something failed inside the server; the message stays generic (500)."""


def as_api_error(exc: EngineError) -> APIError:
    """The API error for an engine's error: the one place engine failures get HTTP statuses."""
    kinds: dict[type[EngineError], type[APIError]] = {
        RequestRejected: BadRequestError,
        EngineStopping: OverloadedError,
        EngineFailed: InternalError,
    }
    kind = next((k for t, k in kinds.items() if isinstance(exc, t)), InternalError)
    return kind(exc.message, param=exc.param, code=exc.code)


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Build ``{"error": {...}}`` as OpenAI's API returns it."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def validation_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """Turn a pydantic error location into an OpenAI ``param`` like ``messages[0].content``."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("function-"):
            out += f".{part}" if out else part
    return out or None


def error_response(error: APIError) -> JSONResponse:
    """The JSON response for one :class:`APIError`."""
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers())


async def send_error(send: Send, error: APIError) -> None:
    """Answer ``error`` straight through ASGI ``send``, for middleware outside FastAPI."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _first_validation_error(exc: RequestValidationError) -> BadRequestError:
    errors = exc.errors()
    if not errors:
        return BadRequestError("Invalid request.")
    first = errors[0]
    param = validation_param(first.get("loc", ()))
    message = first.get("msg", "Invalid value")
    if param:
        message = f"{message} (at {param})"
    if len(errors) > 1:
        message += f"; and {len(errors) - 1} more problem(s)"
    return BadRequestError(message, param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through OpenAI's error shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(EngineError)
    async def _engine_error(_: Request, exc: EngineError) -> JSONResponse:
        return error_response(as_api_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_first_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds: dict[int, type[APIError]] = {404: NotFoundError, 401: AuthenticationError}
        kind = kinds.get(exc.status_code, BadRequestError if exc.status_code < 500 else APIError)
        error = kind(str(exc.detail))
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(InternalError("The server had an error processing your request."))
