"""Arithmetic for benchmark summaries: percentiles, per-level figures, cost and A/B ratios.

Everything here is pure and works on plain numbers, so it can be unit-tested without a server.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vlmserve.bench.records import RequestRecord

PERCENTILES: tuple[int, ...] = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks.

    This is numpy's default ("linear") method, the one ``vllm bench serve`` reports, so the two
    tools agree on the same samples.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Distribution:
    """Mean and percentiles of one latency metric, in seconds; all ``None`` without samples."""

    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        """Summarise ``values`` (seconds)."""
        samples = list(values)
        if not samples:
            return cls(0, None, None, None, None)
        p50, p90, p99 = (percentile(samples, q) for q in PERCENTILES)
        return cls(len(samples), sum(samples) / len(samples), p50, p90, p99)


def cost_per_unit(
    gpu_price_per_hour: float, wall_seconds: float, units: float, per: float
) -> float | None:
    """Cost of ``per`` units when ``units`` took ``wall_seconds`` on a GPU priced per hour.

    ``cost_per_unit(price, wall, images, 1000)`` is the cost per 1K images: the GPU is billed for
    the whole wall time of the measured level, whatever its utilisation.
    """
    if units <= 0 or wall_seconds <= 0:
        return None
    return gpu_price_per_hour / 3600 * wall_seconds / units * per


@dataclass(frozen=True)
class PairedRatio:
    """A/B over paired batches (A's batch k against B's batch k, run next to each other): the
    geometric mean of the batch ratios and its approximate 95% interval (normal approximation
    on the log ratios), so drift between batches widens the interval instead of moving the
    figure."""

    mean: float
    low: float
    high: float
    batches: int

    @classmethod
    def of(cls, a: Sequence[float], b: Sequence[float]) -> PairedRatio | None:
        """``None`` unless both sides ran the same number (at least 3) of non-empty batches."""
        if len(a) != len(b) or len(a) < 3 or not all(x > 0 for x in (*a, *b)):
            return None
        logs = [math.log(x / y) for x, y in zip(a, b, strict=True)]
        mean = statistics.fmean(logs)
        half = statistics.NormalDist().inv_cdf(0.975) * statistics.stdev(logs) / len(logs) ** 0.5
        return cls(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(logs))


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or ``None`` when either side is missing or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


@dataclass
class LevelSummary:
    """The figures for one load level (one concurrency or one request rate) against one server."""

    target: str
    level_kind: str
    level: float
    sent: int
    completed: int
    errors: dict[str, int]
    wall_seconds: float
    images: int
    output_tokens: int
    prompt_tokens: int
    requests_per_second: float
    images_per_second: float
    output_tokens_per_second: float
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution
    first_chunk: Distribution
    tokens_from_usage: bool
    output_tokens_min: int | None
    output_tokens_max: int | None
    cost_per_1k_images: float | None = None
    cost_per_1m_output_tokens: float | None = None
    notes: list[str] = field(default_factory=list)
    #: Requests per second of each ``--rounds`` batch (with ``--compare``), in run order.
    batch_requests_per_second: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def tpot_of(record: RequestRecord) -> float | None:
    """Time per output token after the first: (end-to-end - TTFT) / (tokens - 1)."""
    if record.ttft is None or record.e2el is None or record.output_tokens < 2:
        return None
    return (record.e2el - record.ttft) / (record.output_tokens - 1)


def summarize(
    records: Sequence[RequestRecord],
    *,
    target: str,
    level_kind: str,
    level: float,
    wall_seconds: float,
    gpu_price_per_hour: float | None = None,
    batch_rates: Sequence[float] = (),
) -> LevelSummary:
    """Summarise the measured requests of one level; ``wall_seconds`` is the level's wall time."""
    ok = [r for r in records if r.error is None]
    errors = Counter(r.error for r in records if r.error is not None)
    images = sum(r.images for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    per_second = (lambda n: n / wall_seconds) if wall_seconds > 0 else (lambda n: 0.0)
    token_counts = [r.output_tokens for r in ok]
    summary = LevelSummary(
        target=target,
        level_kind=level_kind,
        level=level,
        sent=len(records),
        completed=len(ok),
        errors=dict(sorted(errors.items())),
        wall_seconds=wall_seconds,
        images=images,
        output_tokens=output_tokens,
        prompt_tokens=sum(r.prompt_tokens or 0 for r in ok),
        requests_per_second=per_second(len(ok)),
        images_per_second=per_second(images),
        output_tokens_per_second=per_second(output_tokens),
        ttft=Distribution.of(r.ttft for r in ok if r.ttft is not None),
        tpot=Distribution.of(t for r in ok if (t := tpot_of(r)) is not None),
        itl=Distribution.of(gap for r in ok for gap in r.itl),
        e2el=Distribution.of(r.e2el for r in ok if r.e2el is not None),
        first_chunk=Distribution.of(r.first_chunk for r in ok if r.first_chunk is not None),
        tokens_from_usage=all(r.tokens_from_usage for r in ok),
        output_tokens_min=min(token_counts) if token_counts else None,
        output_tokens_max=max(token_counts) if token_counts else None,
        batch_requests_per_second=list(batch_rates),
    )
    if gpu_price_per_hour is not None:
        summary.cost_per_1k_images = cost_per_unit(gpu_price_per_hour, wall_seconds, images, 1e3)
        summary.cost_per_1m_output_tokens = cost_per_unit(
            gpu_price_per_hour, wall_seconds, output_tokens, 1e6
        )
    if not summary.tokens_from_usage:
        summary.notes.append("output tokens counted from content chunks (no usage chunk)")
    return summary
