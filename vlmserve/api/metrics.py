"""Prometheus metrics for one server: request counts and latencies, tokens, engine state."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from vlmserve.engine.base import EngineStats

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)


class _EngineCollector(Collector):
    """Reads the engine's state at scrape time, so the gauges are never stale."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        stats = self._stats()
        if stats is None:
            return
        yield GaugeMetricFamily(
            "vlmserve_requests_running", "Requests the engine is generating for.", stats.running
        )
        yield GaugeMetricFamily(
            "vlmserve_requests_waiting", "Requests queued for the engine.", stats.waiting
        )
        if stats.kv_cache_usage is not None:
            yield GaugeMetricFamily(
                "vlmserve_kv_cache_usage_ratio",
                "Share of the KV cache in use.",
                stats.kv_cache_usage,
            )
        if stats.step_sizes is not None:
            yield HistogramMetricFamily(
                "vlmserve_engine_step_requests",
                "Requests decoded together in each engine step (batch occupancy).",
                buckets=stats.step_sizes.cumulative(),
                sum_value=stats.step_sizes.total,
            )


class Metrics:
    """The server's metrics, in a registry of its own."""

    def __init__(self, engine_stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vlmserve_requests",
            "Generation requests by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vlmserve_request_duration_seconds",
            "Time from request to last token.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "vlmserve_time_to_first_token_seconds",
            "Time from request to first token.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "vlmserve_prompt_tokens",
            "Prompt tokens processed (image tokens included).",
            ["endpoint"],
            registry=self.registry,
        )
        self.generation_tokens = Counter(
            "vlmserve_generation_tokens",
            "Tokens generated.",
            ["endpoint"],
            registry=self.registry,
        )
        self.images = Counter("vlmserve_images", "Images received.", registry=self.registry)
        self.image_cache_hits = Counter(
            "vlmserve_image_cache_hits",
            "Images taken from the decoded-image cache.",
            registry=self.registry,
        )
        self.image_cache_misses = Counter(
            "vlmserve_image_cache_misses",
            "Images decoded because the cache did not hold them.",
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine_stats))

    def observe(
        self,
        endpoint: str,
        latency: float,
        ttft: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """Record one finished request of ``endpoint`` (its path)."""
        self.latency.labels(endpoint).observe(latency)
        if ttft is not None:
            self.ttft.labels(endpoint).observe(ttft)
        self.prompt_tokens.labels(endpoint).inc(prompt_tokens)
        self.generation_tokens.labels(endpoint).inc(completion_tokens)

    def render(self) -> bytes:
        """The exposition text for ``GET /metrics``."""
        return generate_latest(self.registry)
