"""A request body limit that holds by construction: no body past the limit is ever held.

A pure ASGI middleware, so it sees the body as it arrives, before FastAPI reads it whole. A
declared ``Content-Length`` over the limit is refused before one body byte is read; a chunked
body (or one that lies about its length) is counted message by message and refused as soon as it
passes the limit. Either way the answer is a 413 in OpenAI's error shape with ``Connection:
close``.

Before the 413 goes out, the rest of the upload is read and thrown away, one chunk at a time, for
up to :data:`LINGER_SECONDS` (nginx calls this a lingering close): most HTTP clients, httpx and
so the OpenAI SDK among them, read the answer only once they have sent the whole body, and
closing a socket with unread data makes the kernel send a reset that destroys the 413 before the
client reads it. A client that sent ``Expect: 100-continue`` has sent no body yet and gets the
413 at once. Nothing past the limit is ever held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.api.errors import PayloadTooLargeError, send_error

logger = logging.getLogger(__name__)

#: Longest the rest of a refused body is read and dropped before the connection closes.
LINGER_SECONDS = 30.0


class BodyLimitMiddleware:
    """Refuses request bodies larger than ``limit`` bytes with a 413."""

    def __init__(
        self, app: ASGIApp, limit: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        #: Paths with a limit of their own (batch file uploads).
        self.path_limits = dict(path_limits or {})

    def _refusal(self, limit: int) -> PayloadTooLargeError:
        hint = "send fewer or smaller images" if limit == self.limit else "send a smaller file"
        return PayloadTooLargeError(
            f"The request body is larger than this server's {limit}-byte limit; {hint}."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.limit)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            logger.info("refused a %s-byte body before reading it", declared.decode())
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        overflowed = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    raise self._refusal(limit)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflowed:
                return  # the app's answer to the overflow; the 413 below replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # Whatever the app made of the refused read (FastAPI turns it into a 400) is dropped.
            if not overflowed:
                raise
        if overflowed and not started:
            logger.info("refused a body that passed %d bytes while arriving", limit)
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Drop the rest of the body (unless the client waits for 100-continue), then a 413."""
        headers = dict(scope.get("headers") or [])
        if headers.get(b"expect", b"").lower() != b"100-continue":
            await _drain(receive)
        await send_error(send, self._refusal(limit))


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a request body, for at most :data:`LINGER_SECONDS`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_SECONDS):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
