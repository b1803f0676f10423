"""Where cached answers live: memory (bounded by entries and bytes, with a TTL) or Redis.

The in-memory store is cachetools' ``TTLCache`` sized in bytes, with the entry bound kept by
evicting its least recently used item first. In Redis each answer is one key with the TTL; the
Redis server's ``maxmemory`` policy (``allkeys-lru``) bounds the bytes, as the Helm chart sets it.
When Redis is down the memory store stands in, so a replica still answers its own repeats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cachetools import TTLCache
from prometheus_client import CollectorRegistry, Counter, Gauge

from vlmserve.config import Settings
from vlmserve.state.link import RedisLink, StateUnavailable

logger = logging.getLogger(__name__)


class MemoryStore:
    """A process-local LRU cache of encoded answers, bounded by entries and bytes, with a TTL."""

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttl: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._cache: TTLCache[str, bytes] = TTLCache(
            maxsize=max_bytes, ttl=ttl, timer=timer, getsizeof=len
        )

    @property
    def nbytes(self) -> int:
        """Bytes of answers held now."""
        self._cache.expire()
        return int(self._cache.currsize)

    def get(self, key: str) -> bytes | None:
        """The answer under ``key``, unless it expired or was evicted."""
        return self._cache.get(key)

    def put(self, key: str, value: bytes) -> None:
        """Store ``value``; one larger than the whole cache is not kept."""
        if len(value) > self.max_bytes:
            return
        while key not in self._cache and len(self._cache) >= self.max_entries:
            self._cache.popitem()
        self._cache[key] = value


class CacheMetrics:
    """Hits, misses and bytes of one response cache, in the server's registry."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.hits = Counter(
            f"{prefix}_response_cache_hits", "Requests answered from the cache.", registry=registry
        )
        self.misses = Counter(
            f"{prefix}_response_cache_misses",
            "Cacheable requests not found in the cache (then run and stored).",
            registry=registry,
        )
        self.stored_bytes = Counter(
            f"{prefix}_response_cache_stored_bytes",
            "Bytes of answers written to the cache.",
            registry=registry,
        )
        self.bytes = Gauge(
            f"{prefix}_response_cache_bytes",
            "Bytes of answers this process holds in memory (its Redis fallback when shared).",
            registry=registry,
        )


class AnswerStore:
    """Cached answers in Redis when there is a link, else (or while it is down) in memory."""

    def __init__(self, settings: Settings, link: RedisLink | None, metrics: CacheMetrics) -> None:
        self.link = link
        self.ttl_ms = int(settings.response_cache_ttl_seconds * 1000)
        self.memory = MemoryStore(
            settings.response_cache_max_entries,
            settings.response_cache_max_bytes,
            settings.response_cache_ttl_seconds,
        )
        self.metrics = metrics
        metrics.bytes.set_function(lambda: self.memory.nbytes)

    async def get(self, key: str) -> bytes | None:
        """The stored answer for ``key``, or None."""
        if self.link is not None:
            redis_key = self.link.key("cache", key)
            try:
                value = await self.link.run(lambda client: client.get(redis_key))
                return value.encode() if isinstance(value, str) else value
            except StateUnavailable:
                pass
        return self.memory.get(key)

    async def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` for the TTL."""
        self.metrics.stored_bytes.inc(len(value))
        if self.link is not None:
            redis_key = self.link.key("cache", key)
            try:
                await self.link.run(lambda client: client.set(redis_key, value, px=self.ttl_ms))
                return
            except StateUnavailable:
                pass
        self.memory.put(key, value)
