"""A request body limit that holds by construction: no body past the limit is ever held.

A pure ASGI middleware, so it sees the body as it arrives, before FastAPI reads it whole. A
declared ``Content-Length`` over the limit is refused before one body byte is read; a chunked
body (or one that lies about its length) is counted message by message and refused as soon as it
passes the limit. Either way the answer is a 413 in OpenAI's error shape with ``Connection:
close``, so the server drops the rest of the upload instead of buffering it.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.api.errors import PayloadTooLargeError, send_error

logger = logging.getLogger(__name__)


class BodyLimitMiddleware:
    """Refuses request bodies larger than ``limit`` bytes with a 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _refusal(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than this server's {self.limit}-byte limit; send "
            "fewer or smaller images."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            logger.info("refused a %s-byte body before reading it", declared.decode())
            await send_error(send, self._refusal())
            return
        received = 0
        overflowed = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    overflowed = True
                    raise self._refusal()
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
            logger.info("refused a body that passed %d bytes while arriving", self.limit)
            await send_error(send, self._refusal())
