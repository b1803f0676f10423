"""One Redis connection for the process, with a breaker that falls back to memory.

Shared state is an optimisation of fairness (one budget per key, hits shared across replicas), so
Redis going away must never fail a request: a Redis error or timeout marks the link down for
``redis_retry_seconds``, the caller uses its in-memory fallback meanwhile, and the log says so once
per outage (and again when Redis is back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from vlmserve.config import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StateUnavailable(Exception):
    """Redis cannot be used right now; the caller falls back to its in-memory state."""


class RedisLink:
    """Runs Redis operations, or raises :class:`StateUnavailable` while Redis is down."""

    def __init__(self, url: str, prefix: str, timeout: float, retry_seconds: float) -> None:
        self.prefix = prefix
        self.retry_seconds = retry_seconds
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None
        )
        self._down_until = 0.0
        self._down = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisLink | None:
        """A link to ``settings.redis_url``, or None when state stays in memory."""
        if not settings.redis_url:
            return None
        return cls(
            settings.redis_url,
            settings.redis_key_prefix,
            settings.redis_timeout_seconds,
            settings.redis_retry_seconds,
        )

    def key(self, *parts: str) -> str:
        """A key under this deployment's prefix: ``prefix:part:part``."""
        return ":".join((self.prefix, *parts))

    @property
    def up(self) -> bool:
        """False while the breaker holds Redis off after an error."""
        return not self._down or time.monotonic() >= self._down_until

    async def run(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """``operation(client)``; :class:`StateUnavailable` when Redis is down or fails now."""
        if not self.up:
            raise StateUnavailable
        try:
            result = await operation(self.client)
        except (RedisError, OSError) as exc:
            if not self._down:
                logger.warning(
                    "Redis unreachable (%s: %s); using per-process state for %.0f s at a time "
                    "until it is back",
                    type(exc).__name__,
                    exc,
                    self.retry_seconds,
                )
            self._down = True
            self._down_until = time.monotonic() + self.retry_seconds
            raise StateUnavailable from exc
        if self._down:
            logger.warning("Redis is reachable again; shared state resumes")
            self._down = False
        return result

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()
