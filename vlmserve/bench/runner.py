"""Load generation: warm-up, closed-loop concurrency levels, Poisson arrivals, A/B interleaving."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from vlmserve.bench.client import chat_url, make_headers, send_streaming
from vlmserve.bench.records import RequestRecord
from vlmserve.bench.workload import Workload

logger = logging.getLogger(__name__)

LENGTH_NOT_ENFORCED = (
    "output length not enforced: the server rejected min_tokens/ignore_eos ({status}), so "
    "requests were sent without them and answers may stop before --output-tokens"
)
# FastAPI servers without a custom validation handler (transformers serve) answer 422, not 400.
_REJECTED = ("http_400", "http_422")


class WarmUpError(RuntimeError):
    """The server did not answer the first warm-up request, so nothing would be measured."""


@dataclass(frozen=True)
class Target:
    """One OpenAI-compatible server under test; ``name`` is ``A`` or ``B`` in reports."""

    name: str
    base_url: str
    model: str
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Level:
    """One load level: a fixed number of requests in flight, or a Poisson arrival rate (req/s)."""

    kind: Literal["concurrency", "rate"]
    value: float

    @property
    def label(self) -> str:
        """Short text for tables: ``c=4`` or ``rate=2.5``."""
        shown = int(self.value) if float(self.value).is_integer() else self.value
        return f"c={shown}" if self.kind == "concurrency" else f"rate={shown}"


@dataclass(frozen=True)
class LoadPlan:
    """How much load to apply at each level and for how long."""

    levels: list[Level]
    num_requests: int | None = 100
    duration: float | None = None
    warmup: int = 2
    timeout: float = 600.0
    seed: int = 0
    #: With two targets, each level is cut into this many batches, run A,B then B,A in turn.
    rounds: int = 2


@dataclass
class LevelResult:
    """The measured requests of one level against one target and the level's wall time."""

    target: str
    level: Level
    records: list[RequestRecord]
    wall_seconds: float
    started_at: str
    #: Completed requests per second of each ``--rounds`` batch, in run order.
    batch_rates: list[float] = field(default_factory=list)


@dataclass
class TargetSession:
    """A target with its HTTP client, its pre-encoded bodies and what the warm-up found out."""

    target: Target
    workload: Workload
    client: aiohttp.ClientSession
    enforce_length: bool = True
    bodies: list[bytes] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sent: int = 0

    @property
    def url(self) -> str:
        """The chat completions URL."""
        return chat_url(self.target.base_url)

    def next_body(self) -> bytes:
        """The body for the next request, walking the image pool round-robin."""
        body = self.bodies[self.sent % len(self.bodies)]
        self.sent += 1
        return body

    async def send(self, index: int, level_start: float) -> RequestRecord:
        """Send one request and return its record."""
        record = RequestRecord(
            index=index, target=self.target.name, images=self.workload.images_per_request
        )
        headers = make_headers(self.target.api_key)
        return await send_streaming(
            self.client, self.url, self.next_body(), headers, record, level_start
        )

    async def warm_up(self, count: int) -> None:
        """Send ``count`` uncounted requests (at least one, to probe the length extensions)."""
        model, extra = self.target.model, self.target.extra_body
        self.bodies = self.workload.encoded_bodies(model, enforce_length=True, extra=extra)
        first = await self.send(-1, time.perf_counter())
        if first.error in _REJECTED:
            note = LENGTH_NOT_ENFORCED.format(status=first.error.replace("_", " "))
            logger.warning("%s: %s (%s)", self.target.name, note, first.error_message)
            self.enforce_length = False
            self.notes.append(note)
            self.bodies = self.workload.encoded_bodies(model, enforce_length=False, extra=extra)
            first = await self.send(-1, time.perf_counter())
        if first.error is not None:
            raise WarmUpError(
                f"{self.target.name}: warm-up request failed ({first.error}): {first.error_message}"
            )
        for _ in range(count - 1):
            await self.send(-1, time.perf_counter())


Progress = Callable[[int], object]


async def _closed_loop(
    session: TargetSession, concurrency: int, plan: LoadPlan, start: float, progress: Progress
) -> list[RequestRecord]:
    """``concurrency`` workers, each sending its next request as soon as the last one ends."""
    records: list[RequestRecord] = []
    counter = itertools.count()
    deadline = start + plan.duration if plan.duration else None

    async def worker() -> None:
        while True:
            index = next(counter)
            if plan.num_requests is not None and index >= plan.num_requests:
                return
            if deadline is not None and time.perf_counter() >= deadline:
                return
            records.append(await session.send(index, start))
            progress(1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


async def _poisson(
    session: TargetSession, rate: float, plan: LoadPlan, start: float, progress: Progress
) -> list[RequestRecord]:
    """Open loop: arrivals with exponential gaps of mean ``1/rate``, however many are open."""
    rng = random.Random(plan.seed)
    deadline = start + plan.duration if plan.duration else None
    tasks: list[asyncio.Task[RequestRecord]] = []
    due = start
    for index in itertools.count():
        if plan.num_requests is not None and index >= plan.num_requests:
            break
        due += rng.expovariate(rate) if rate != float("inf") else 0.0
        if deadline is not None and due >= deadline:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        task = asyncio.create_task(session.send(index, start))
        task.add_done_callback(lambda _: progress(1))
        tasks.append(task)
    return list(await asyncio.gather(*tasks))


async def run_level(
    session: TargetSession, level: Level, plan: LoadPlan, progress: Progress
) -> LevelResult:
    """Apply one level of load to one target and time it, first request sent to last answer."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.perf_counter()
    if level.kind == "concurrency":
        records = await _closed_loop(session, int(level.value), plan, start, progress)
    else:
        records = await _poisson(session, level.value, plan, start, progress)
    wall = time.perf_counter() - start
    logger.info(
        "%s %s: %d requests in %.2f s", session.target.name, level.label, len(records), wall
    )
    completed = sum(r.error is None for r in records)
    rate = completed / wall if wall > 0 else 0.0
    return LevelResult(session.target.name, level, records, wall, started_at, [rate])


def merge(results: list[LevelResult]) -> LevelResult:
    """One result from batches of the same level and target: records joined, wall times added."""
    first = results[0]
    records = [r for result in results for r in result.records]
    for index, record in enumerate(records):
        record.index = index
    wall = sum(result.wall_seconds for result in results)
    rates = [rate for result in results for rate in result.batch_rates]
    return LevelResult(first.target, first.level, records, wall, first.started_at, rates)


def split(plan: LoadPlan, parts: int) -> list[LoadPlan]:
    """``plan`` cut into ``parts`` batches of (nearly) equal request count or duration."""
    plans = []
    for part in range(parts):
        num = None
        if plan.num_requests is not None:
            num = plan.num_requests // parts + (1 if part < plan.num_requests % parts else 0)
        duration = plan.duration / parts if plan.duration else None
        plans.append(
            dataclasses.replace(plan, num_requests=num, duration=duration, seed=plan.seed + part)
        )
    return plans


def abba_order(level_index: int, batch: int) -> tuple[int, int]:
    """Which target (0 = A, 1 = B) goes first and second in one batch: A,B then B,A, and so on.

    Alternating who goes first means slow drift (thermal throttling, a noisy neighbour, caches
    warming) lands on both sides equally instead of always on the later one.
    """
    return (0, 1) if (level_index + batch) % 2 == 0 else (1, 0)


@dataclass
class BenchmarkOutcome:
    """Every level's result, in run order, and what each target's warm-up noted."""

    results: list[LevelResult]
    notes: dict[str, list[str]]
    length_enforced: dict[str, bool]


def _total_requests(plan: LoadPlan, targets: int) -> int | None:
    if plan.num_requests is None:
        return None
    return plan.num_requests * len(plan.levels) * targets


async def run_benchmark(
    targets: list[Target], workload: Workload, plan: LoadPlan, show_progress: bool = True
) -> BenchmarkOutcome:
    """Warm every target up, then run each level; with two targets, interleave them A,B,B,A."""
    from tqdm import tqdm

    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    async with contextlib.AsyncExitStack() as stack:
        sessions = []
        for target in targets:
            # limit=0: no cap on connections, the load plan alone decides how many are open.
            connector = aiohttp.TCPConnector(limit=0)
            client = aiohttp.ClientSession(timeout=timeout, connector=connector)
            await stack.enter_async_context(client)
            sessions.append(TargetSession(target, workload, client))
        for session in sessions:
            await session.warm_up(plan.warmup)
        batches = split(plan, plan.rounds) if len(sessions) == 2 else [plan]
        results: list[LevelResult] = []
        bar = tqdm(
            total=_total_requests(plan, len(sessions)), unit="req", disable=not show_progress
        )
        with bar:
            for level_index, level in enumerate(plan.levels):
                per_target: list[list[LevelResult]] = [[] for _ in sessions]
                for batch_index, batch in enumerate(batches):
                    order = abba_order(level_index, batch_index) if len(sessions) == 2 else (0,)
                    for target_index in order:
                        session = sessions[target_index]
                        bar.set_description(f"{session.target.name} {level.label}")
                        result = await run_level(session, level, batch, bar.update)
                        per_target[target_index].append(result)
                results.extend(merge(batch_results) for batch_results in per_target)
    return BenchmarkOutcome(
        results,
        {s.target.name: s.notes for s in sessions},
        {s.target.name: s.enforce_length for s in sessions},
    )
