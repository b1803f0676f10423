"""What every generation endpoint shares: one engine run, collected or streamed, under a deadline.

Chat completions, completions and responses all go validate -> prepare -> collect or stream; only
their edges differ (how the input becomes an :class:`EngineRequest`, how outputs are written).
A :class:`Generation` is one prepared request running on the engine: it tallies the outputs,
enforces the deadline, charges the caller's token budget and records the endpoint's metrics
exactly once, and closing it aborts the request inside the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vlmserve.api.errors import APIError, InternalError, RequestTimeoutError, as_api_error
from vlmserve.api.metrics import Metrics
from vlmserve.engine.base import Engine, EngineOutput, PreparedRequest, TokenLogprob
from vlmserve.engine.errors import EngineError

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: Called with the tokens (prompt plus completion) a request used, when it ends.
UsageSink = Callable[[int], None]


@contextlib.asynccontextmanager
async def deadline_scope(deadline: float) -> AsyncIterator[None]:
    """Run the block until the event-loop time ``deadline``; then cancel it with a 504."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        logger.warning("request timed out; its work was cancelled")
        raise RequestTimeoutError("The request took longer than this server allows.") from None


@dataclass
class Tally:
    """What one request has produced so far, per choice."""

    texts: list[str]
    reasons: list[str | None]
    logprobs: list[list[TokenLogprob]]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    @classmethod
    def for_choices(cls, n: int) -> Tally:
        """An empty tally for ``n`` choices."""
        return cls([""] * n, [None] * n, [[] for _ in range(n)])

    def add(self, output: EngineOutput) -> None:
        """Fold one engine output in."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.prompt_tokens = output.prompt_tokens
        for delta in output.deltas:
            self.texts[delta.index] += delta.text
            self.logprobs[delta.index] += delta.logprobs or []
            self.completion_tokens += delta.num_tokens
            if delta.finish_reason:
                self.reasons[delta.index] = delta.finish_reason

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class Generation:
    """One prepared request on the engine, for one endpoint."""

    def __init__(
        self,
        engine: Engine,
        prepared: PreparedRequest,
        deadline: float,
        metrics: Metrics,
        endpoint: str,
        on_usage: UsageSink | None = None,
    ) -> None:
        self.prepared = prepared
        self.tally = Tally.for_choices(prepared.sampling.options.n)
        self._outputs = engine.generate(prepared)
        self._deadline = deadline
        self._metrics = metrics
        self._endpoint = endpoint
        self._on_usage = on_usage
        self._first: EngineOutput | None = None
        self._finished = False
        self._closed = False

    async def collect(self) -> Tally:
        """Run to the end (or a 504 at the deadline)."""
        try:
            async with deadline_scope(self._deadline):
                async for output in self._outputs:
                    self.tally.add(output)
            self._finished = True
        finally:
            await self.close()
        self._record()
        return self.tally

    async def start(self) -> None:
        """Wait for the first output, so early errors are plain HTTP errors, not stream events."""
        try:
            async with deadline_scope(self._deadline):
                self._first = await anext(self._outputs, None)
        except BaseException:
            await self.close()
            raise

    async def outputs(self) -> AsyncGenerator[EngineOutput, None]:
        """The outputs from the first on (call :meth:`start` first), each added to the tally."""
        try:
            output = self._first
            while output is not None:
                self.tally.add(output)
                yield output
                async with deadline_scope(self._deadline):
                    output = await anext(self._outputs, None)
            self._finished = True
            self._record()
        finally:
            await self.close()

    def _record(self) -> None:
        tally = self.tally
        ttft = None if tally.first_token_at is None else tally.first_token_at - tally.started
        self._metrics.observe(
            self._endpoint,
            time.perf_counter() - tally.started,
            ttft,
            tally.prompt_tokens,
            tally.completion_tokens,
        )

    async def close(self) -> None:
        """Abort the engine request if it still runs, and charge the tokens it used, once."""
        if self._closed:
            return
        self._closed = True
        await self._outputs.aclose()
        if not self._finished:
            logger.info(
                "request aborted in the engine after %d completion tokens",
                self.tally.completion_tokens,
            )
        if self._on_usage is not None:
            self._on_usage(self.tally.total_tokens)


async def guarded(
    events: AsyncGenerator[str, None], error_event: Callable[[dict[str, Any]], str]
) -> AsyncGenerator[str, None]:
    """``events``, ending with an error event instead of an exception; closed when this is."""
    try:
        async for event in events:
            yield event
    except APIError as exc:
        yield error_event(exc.body())
    except EngineError as exc:
        yield error_event(as_api_error(exc).body())
    except Exception:
        logger.exception("stream failed")
        yield error_event(InternalError("The server had an error while streaming.").body())
    finally:
        await events.aclose()


async def with_done(events: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    """Chat and completions streams end with ``data: [DONE]``, after an error event too."""
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"


async def merged(
    streams: list[AsyncGenerator[T, None]],
) -> AsyncGenerator[tuple[int, T], None]:
    """Items of several streams as they come, tagged with their stream's index."""
    queue: asyncio.Queue[tuple[int, T] | tuple[int, BaseException] | None] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[T, None]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put((index, exc))
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    running = len(tasks)
    try:
        while running:
            got = await queue.get()
            if got is None:
                running -= 1
                continue
            index, item = got
            if isinstance(item, BaseException):
                raise item
            yield index, item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


def sse(payload: dict[str, Any], event: str | None = None) -> str:
    """One server-sent event (with an ``event:`` line when ``event`` is given)."""
    data = json.dumps(payload, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
