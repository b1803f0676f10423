"""Graceful shutdown: on SIGTERM, drain first, then let uvicorn stop.

uvicorn's own handling closes the listening socket at once and then waits for open connections:
a readiness probe then sees "connection refused" rather than a 503, and a request that reaches
the pod while the load balancer still routes to it fails at the TCP level. Here the first SIGTERM
(or SIGINT) only starts draining: ``/health`` answers 503, new chat requests get a 503, and the
requests in flight run to their end, up to ``shutdown_grace_seconds``. Then uvicorn is told to
exit, and the process exits 0. A second signal stops the wait.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import socket
from types import FrameType

import uvicorn

from vlmserve.api.admission import Admission

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose exit signals drain the :class:`Admission` before stopping."""

    def __init__(self, config: uvicorn.Config, admission: Admission, grace: float) -> None:
        super().__init__(config)
        self.admission = admission
        self.grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until drained; remembers the loop the signal handler must reach."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start draining; a second signal exits without waiting.

        The signal is not recorded in ``_captured_signals``: uvicorn would re-raise it after
        shutdown and the process would end by SIGTERM instead of exiting 0.
        """
        if self.admission.draining or self._loop is None:
            self.should_exit = True
            return
        # Only a flag and a wake-up here: this runs inside a signal handler, in the context of
        # whatever task was interrupted, so the drain gets a context of its own (no request id).
        self.admission.draining = True
        name = signal.Signals(sig).name
        self._loop.call_soon_threadsafe(self._start_drain, name, context=contextvars.Context())

    def _start_drain(self, name: str) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(name))

    async def _drain(self, name: str) -> None:
        logger.info(
            "%s: draining; %d request(s) in flight, up to %g s to finish",
            name,
            self.admission.in_flight,
            self.grace,
        )
        try:
            async with asyncio.timeout(self.grace):
                await self.admission.wait_idle()
            logger.info("drained; shutting down")
        except TimeoutError:
            logger.warning(
                "shutdown grace ran out with %d request(s) in flight", self.admission.in_flight
            )
        self.should_exit = True
