"""Caches that let a conversation resend its images for the cost of one decode.

:class:`DecodedCache` keeps decoded, shrunk images keyed by the SHA-256 of their encoded bytes
(and the detail they were shrunk for), least recently used first out, bounded by the bytes of the
pixels it holds. :class:`UrlCache` remembers, for an ``http(s)`` image URL whose response allowed
caching (``Cache-Control: max-age`` or ``Expires``, and neither ``no-store`` nor ``no-cache``),
which bytes it served until when: a fresh URL then costs neither a fetch nor a decode.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from vlmserve.images.codec import Decoded, Size


@dataclass(frozen=True)
class CachedImage:
    """A decoded image and the size of the image it was decoded from (for the limits)."""

    decoded: Decoded
    original: Size


class DecodedCache:
    """An LRU cache of decoded images, bounded by the bytes of their pixels."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Hashable, CachedImage] = OrderedDict()

    def get(self, key: Hashable) -> CachedImage | None:
        """The entry for ``key`` (now the most recently used), or ``None``."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Hashable, entry: CachedImage) -> None:
        """Keep ``entry``, dropping the least recently used ones to stay within the bound."""
        size = entry.decoded.nbytes
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.decoded.nbytes
        self._entries[key] = entry
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.decoded.nbytes

    def __len__(self) -> int:
        return len(self._entries)


def freshness_seconds(headers: Mapping[str, str], now: float | None = None) -> float:
    """How long a response may be reused without asking again, by RFC 9111 (0: not at all)."""
    directives = {}
    for item in headers.get("cache-control", "").split(","):
        name, _, value = item.strip().partition("=")
        directives[name.lower()] = value.strip('"')
    # The server is a cache shared by all its clients: "private" responses are not for it.
    if {"no-store", "no-cache", "private"} & directives.keys():
        return 0.0
    age = _number(headers.get("age", "")) or 0.0
    max_age = _number(directives.get("s-maxage", ""))
    if max_age is None:
        max_age = _number(directives.get("max-age", ""))
    if max_age is not None:
        return max(0.0, max_age - age)
    expires = headers.get("expires")
    if expires:
        try:
            expires_at = parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError):
            return 0.0  # an invalid Expires means "already expired"
        return max(0.0, expires_at - (time.time() if now is None else now))
    return 0.0


def _number(text: str) -> float | None:
    return float(text) if text.isdigit() else None


class UrlCache:
    """URL -> (image digest, until when it is fresh), for URLs whose responses allow it."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def get(self, url: str) -> bytes | None:
        """The digest last fetched from ``url``, while it is fresh."""
        entry = self._entries.get(url)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._entries[url]
            return None
        self._entries.move_to_end(url)
        return entry[0]

    def put(self, url: str, digest: bytes, fresh_for: float) -> None:
        """Remember ``digest`` for ``url`` for ``fresh_for`` seconds (nothing when 0)."""
        if fresh_for <= 0 or self.max_entries <= 0:
            return
        self._entries[url] = (digest, self._clock() + fresh_for)
        self._entries.move_to_end(url)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
