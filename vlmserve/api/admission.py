"""Admission of chat requests: a bound on how many are in flight, and draining at shutdown.

A plain ASGI middleware around the chat route, so a request counts from its first byte to the
last byte of its answer (the end of a stream included) and leaves the count however it ends.
Beyond ``max_queued_requests``, or once the server is draining, a request is answered 503 at
once: a client retries or goes elsewhere instead of piling onto a queue that only grows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlmserve.api.errors import APIError, OverloadedError, send_error

logger = logging.getLogger(__name__)

_CUT = "The server shut down before this request finished; retry on another replica."


class Admission:
    """How many chat requests are in flight, the bound, and whether the server is draining."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def refusal(self) -> APIError | None:
        """Why a new request cannot be admitted now, if it cannot."""
        if self.draining:
            return OverloadedError(
                "The server is shutting down; retry on another replica.",
                code="shutting_down",
                retry_after=1,
            )
        if self.in_flight >= self.limit:
            return OverloadedError(
                f"The server is at its limit of {self.limit} requests in flight; retry shortly.",
                code="server_overloaded",
                retry_after=1,
            )
        return None

    def enter(self) -> None:
        """Count a request in."""
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        """Count a request out."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        await self._idle.wait()


class AdmissionMiddleware:
    """Admits requests to ``paths`` (the generation endpoints) through an :class:`Admission`;
    other paths pass."""

    def __init__(self, app: ASGIApp, admission: Admission, paths: Collection[str]) -> None:
        self.app = app
        self.admission = admission
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        refusal = self.admission.refusal()
        if refusal is not None:
            logger.info("refused: %s", refusal.code)
            await send_error(send, refusal)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.admission.enter()
        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not (self.admission.draining and not started):
                raise
            # The shutdown grace ran out and uvicorn cancelled the request: answer in OpenAI's
            # shape (uvicorn would send a bare 500) so the client retries elsewhere.
            logger.warning("cut by shutdown before it finished")
            await send_error(send, OverloadedError(_CUT, code="shutting_down", retry_after=1))
        finally:
            self.admission.leave()
