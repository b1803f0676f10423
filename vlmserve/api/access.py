"""API keys and per-key rate limits.

Keys are compared with :func:`hmac.compare_digest` against every configured key, so the time an
answer takes says nothing about how much of a key was right. A caller is known by the position of
its key, never by the key itself, so no key reaches a log line or a metric label.

Rate limits are token buckets refilled continuously: ``requests_per_minute`` takes one per request
at admission; ``tokens_per_minute`` cannot know a request's size in advance, so a request is
admitted while the caller's bucket is above zero and its real prompt plus completion tokens are
taken when it ends (the bucket may go below zero, which delays the caller's next request).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vlmserve.api.errors import AuthenticationError, RateLimitError
from vlmserve.config import Settings

#: The caller when no API keys are configured: every client shares its limits.
ANONYMOUS = "anonymous"


def load_api_keys(settings: Settings) -> list[str]:
    """Keys from ``api_keys`` (comma-separated) and ``api_keys_file`` (one per line, # comments)."""
    keys = [k.strip() for k in (settings.api_keys or "").split(",")]
    if settings.api_keys_file is not None:
        lines = Path(settings.api_keys_file).read_text().splitlines()
        keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
    return list(dict.fromkeys(k for k in keys if k))


class KeyChecker:
    """Answers who a bearer token belongs to, or raises a 401."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        """Whether requests need a key at all."""
        return bool(self._keys)

    def caller(self, token: str | None) -> str:
        """The caller id (``key-N``) for ``token``; a 401 when it matches no key."""
        if not self._keys:
            return ANONYMOUS
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        given = token.encode()
        found = -1
        for index, key in enumerate(self._keys):
            # No early exit: every key is compared, whichever matches.
            if hmac.compare_digest(given, key):
                found = index
        if found < 0:
            raise AuthenticationError("Incorrect API key provided.")
        return f"key-{found}"


@dataclass
class TokenBucket:
    """``per_minute`` units, refilled evenly; the level may go negative after a late charge."""

    per_minute: int
    clock: Callable[[], float] = time.monotonic
    level: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.level = float(self.per_minute)
        self.updated = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        rate = self.per_minute / 60
        self.level = min(float(self.per_minute), self.level + (now - self.updated) * rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until the level reaches ``amount`` (0 when it already has)."""
        self._refill()
        return max(0.0, (amount - self.level) * 60 / self.per_minute)

    def take(self, amount: float) -> None:
        """Remove ``amount`` (after a refill), even below zero."""
        self._refill()
        self.level -= amount


def rate_limit_error(waits: list[tuple[str, float]]) -> RateLimitError:
    """The 429 for the longest of ``(limit kind, seconds to wait)``."""
    kind, wait = max(waits, key=lambda item: item[1])
    return RateLimitError(
        f"Rate limit reached for {kind} per minute on this API key; retry in "
        f"{max(1, round(wait))} s.",
        retry_after=wait,
    )


class RateLimiter:
    """Per-caller request and token budgets; either limit may be unset."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.clock = clock
        # One entry per caller: bounded by the number of configured keys.
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}

    def admit(self, caller: str) -> None:
        """Count one request for ``caller``, or raise a 429 with the wait in ``Retry-After``."""
        waits = []
        requests = self._bucket(self._requests, self.requests_per_minute, caller)
        tokens = self._bucket(self._tokens, self.tokens_per_minute, caller)
        if requests is not None:
            waits.append(("requests", requests.wait_for(1)))
        if tokens is not None:
            # Admitted while anything is left: the level must be at least one token.
            waits.append(("tokens", tokens.wait_for(1)))
        over = [(kind, wait) for kind, wait in waits if wait > 0]
        if over:
            raise rate_limit_error(over)
        if requests is not None:
            requests.take(1)

    def charge(self, caller: str, tokens: int) -> None:
        """Take the tokens a finished (or aborted) request used from ``caller``'s budget."""
        bucket = self._bucket(self._tokens, self.tokens_per_minute, caller)
        if bucket is not None and tokens > 0:
            bucket.take(tokens)

    def _bucket(
        self, buckets: dict[str, TokenBucket], per_minute: int | None, caller: str
    ) -> TokenBucket | None:
        if per_minute is None:
            return None
        if caller not in buckets:
            buckets[caller] = TokenBucket(per_minute, self.clock)
        return buckets[caller]
