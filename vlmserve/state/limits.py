"""Per-key rate limits shared by every replica through Redis, falling back to memory.

The buckets are those of :mod:`vlmserve.api.access` (continuous refill, late token charges), kept
in one Redis hash per caller and limit and updated by Lua scripts, so the check-then-take of an
admission is atomic across replicas. Redis' own clock (``TIME``) refills them, so replicas whose
clocks differ still agree. Idle buckets expire once they would be full again.
"""

from __future__ import annotations

import asyncio
import logging

from vlmserve.api.access import RateLimiter, rate_limit_error
from vlmserve.state.link import RedisLink, StateUnavailable

logger = logging.getLogger(__name__)

# Shared by both scripts: the level of bucket KEYS[i] (limit per minute `per_min`) at `now`.
_LEVEL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, per_min)
  local v = redis.call('HMGET', key, 'level', 'updated')
  if not v[1] then return per_min end
  return math.min(per_min, tonumber(v[1]) + (now - tonumber(v[2])) * per_min / 60)
end
local function store(key, lvl, per_min)
  redis.call('HSET', key, 'level', tostring(lvl), 'updated', tostring(now))
  -- Gone once it would have refilled: an absent bucket reads as full.
  local full_in = math.max(0, (per_min - lvl) * 60 / per_min)
  redis.call('PEXPIRE', key, math.ceil(full_in * 1000) + 1000)
end
"""

# KEYS: requests bucket, tokens bucket. ARGV: requests/min, tokens/min (0 = no limit).
# Returns the waits (seconds, as strings) for each; both "0" means admitted and one request taken.
_ADMIT = (
    _LEVEL
    + """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local rl, wait_r, wait_t = 0, 0, 0
if rpm > 0 then
  rl = level(KEYS[1], rpm)
  wait_r = math.max(0, (1 - rl) * 60 / rpm)
end
if tpm > 0 then
  wait_t = math.max(0, (1 - level(KEYS[2], tpm)) * 60 / tpm)
end
if wait_r > 0 or wait_t > 0 then return {tostring(wait_r), tostring(wait_t)} end
if rpm > 0 then store(KEYS[1], rl - 1, rpm) end
return {'0', '0'}
"""
)

# KEYS: tokens bucket. ARGV: tokens/min, tokens used.
_CHARGE = (
    _LEVEL
    + """
local tpm = tonumber(ARGV[1])
store(KEYS[1], level(KEYS[1], tpm) - tonumber(ARGV[2]), tpm)
return 1
"""
)


class SharedRateLimiter:
    """The rate limits of :class:`RateLimiter`, kept in Redis when there is a link."""

    def __init__(self, local: RateLimiter, link: RedisLink | None) -> None:
        self.local = local
        self.link = link
        self._charges: set[asyncio.Task[None]] = set()
        if link is not None:
            self._admit = link.client.register_script(_ADMIT)
            self._charge = link.client.register_script(_CHARGE)

    def _keys(self, caller: str) -> list[str]:
        assert self.link is not None
        return [self.link.key("ratelimit", caller, kind) for kind in ("requests", "tokens")]

    async def admit(self, caller: str) -> None:
        """Count one request for ``caller``, or raise a 429 with the wait in ``Retry-After``."""
        rpm, tpm = self.local.requests_per_minute, self.local.tokens_per_minute
        if self.link is None or (rpm is None and tpm is None):
            self.local.admit(caller)
            return
        keys, args = self._keys(caller), [rpm or 0, tpm or 0]
        try:
            waits = await self.link.run(lambda _: self._admit(keys=keys, args=args))
        except StateUnavailable:
            self.local.admit(caller)
            return
        over = [(k, float(w)) for k, w in zip(("requests", "tokens"), waits, strict=True)]
        if any(wait > 0 for _, wait in over):
            raise rate_limit_error(over)

    def charge(self, caller: str, tokens: int) -> None:
        """Take the tokens a finished request used (in the background when they go to Redis)."""
        tpm = self.local.tokens_per_minute
        if tpm is None or tokens <= 0:
            return
        if self.link is None:
            self.local.charge(caller, tokens)
            return
        task = asyncio.get_running_loop().create_task(self._charge_shared(caller, tokens, tpm))
        self._charges.add(task)
        task.add_done_callback(self._charges.discard)

    async def settle(self) -> None:
        """Wait for the token charges still on their way to Redis (at shutdown)."""
        await asyncio.gather(*self._charges)

    async def _charge_shared(self, caller: str, tokens: int, tpm: int) -> None:
        keys = self._keys(caller)[1:]
        try:
            await self.link.run(lambda _: self._charge(keys=keys, args=[tpm, tokens]))  # type: ignore[union-attr]
        except StateUnavailable:
            self.local.charge(caller, tokens)
