"""From a request's ``image_url`` parts to decoded images: limits first, then decoding in a pool.

All images' bytes are gathered first (``data:`` URLs decoded, ``http(s)``/``file`` URLs fetched,
or a fresh URL found in the URL cache), hashed, and their headers read and checked: size, aspect
ratio, the pixels the family's processor would scale each to, and the request's total pixels.
Only then is anything decoded, and only what the decoded-image cache does not hold: in a process
pool sized to the cores (the GIL would keep threads to one core), each image shrunk to its
family's working size, so the image processor never scales a 12-megapixel photo itself. A small
image that needs no shrink is decoded in a thread instead: cheaper than the trip to a worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
from collections.abc import Coroutine, Hashable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from PIL import Image

from vlmserve.api.errors import OverloadedError
from vlmserve.api.metrics import Metrics
from vlmserve.engine.base import Detail
from vlmserve.images.cache import CachedImage, DecodedCache, UrlCache
from vlmserve.images.codec import (
    Decoded,
    ImageLimits,
    ImageRefused,
    Size,
    Targets,
    decode_scaled,
    exit_with_parent,
    probe_size,
)
from vlmserve.images.decode import decode_data_url, refusal_to_400
from vlmserve.images.fetch import MediaFetcher
from vlmserve.images.limits import ResizeRule, check_request_pixels, check_resized

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: Most worker processes the default sizing starts, however many cores there are.
MAX_DEFAULT_WORKERS = 32
#: Least area ratio between an image and its working size for the shrink to be done.
MIN_SHRINK = 2
#: Fresh image URLs remembered (a few dozen bytes each).
URL_CACHE_ENTRIES = 4096
#: Images of at most this many pixels that need no shrink are decoded in a thread of the server
#: (Pillow lets go of the GIL while it decodes): a millisecond or two of work, about what the round
#: trip to a worker process costs (the bytes pickled there, the pixels back, a process woken).
THREAD_DECODE_PIXELS = 1 << 20


class FamilyImageRule(ResizeRule, Protocol):
    """What the pipeline needs from a model family."""

    def working_size(self, width: int, height: int, detail: Detail = "high") -> Size:
        """The smallest size, aspect kept, that the model sees no less of than the original."""
        ...


@dataclass(frozen=True)
class ImageRef:
    """One image part of a request: its URL, the detail it asks for, and its ``param``."""

    url: str
    detail: Detail
    param: str


@dataclass
class _Source:
    """One image once its bytes are known: its digest, header size, and cache entry if any."""

    ref: ImageRef
    digest: bytes
    size: Size
    data: bytes | None = None
    cached: CachedImage | None = None

    @property
    def key(self) -> Hashable:
        return (self.digest, self.ref.detail)


def default_workers() -> int:
    """One worker per CPU core this process may use, at most :data:`MAX_DEFAULT_WORKERS`."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS))


def shrink_targets(rule: FamilyImageRule, size: Size, detail: Detail) -> Targets | None:
    """What to shrink an image of header size ``size`` to, or ``None`` when it is not worth it.

    A shrink by less than :data:`MIN_SHRINK` in area saves little work and resamples the image
    twice (once here, once in the processor) for nothing.
    """
    width, height = size
    stored = rule.working_size(width, height, detail)
    if stored[0] * stored[1] * MIN_SHRINK > width * height:
        return None
    return Targets(stored=stored, turned=rule.working_size(height, width, detail))


def _identify(data: bytes, limits: ImageLimits) -> tuple[bytes, Size]:
    """SHA-256 and header size of image bytes (per-image limits checked)."""
    return hashlib.sha256(data).digest(), probe_size(data, limits)


class ImagePipeline:
    """Loads a request's images under the server's limits, decoding in worker processes."""

    def __init__(
        self,
        limits: ImageLimits,
        media: MediaFetcher,
        rule: FamilyImageRule | None,
        metrics: Metrics | None = None,
        *,
        workers: int | None = None,
        downscale: bool = True,
        cache_bytes: int = 0,
    ) -> None:
        self.limits = limits
        self.media = media
        self.rule = rule
        self.metrics = metrics
        self.workers = default_workers() if workers is None else workers
        self.downscale = downscale
        self.cache = DecodedCache(cache_bytes)
        self.urls = UrlCache(URL_CACHE_ENTRIES if cache_bytes else 0)
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> list[Future[int]]:
        """Start the worker processes now, so the first request does not wait for them.

        Returns one future per worker, done once that worker runs (none if already started).
        """
        if not self.workers or self._pool is not None:
            return []
        context = multiprocessing.get_context("spawn")  # no fork of a threaded server
        self._pool = ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),)
        )
        return [self._pool.submit(os.getpid) for _ in range(self.workers)]

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def worker_pids(self) -> list[int]:
        """Process ids of the decoding workers (none when decoding runs in a thread)."""
        return list(self._pool._processes) if self._pool is not None else []

    async def load(self, refs: Sequence[ImageRef]) -> list[Image.Image]:
        """The decoded RGB images of ``refs``, in order; a 400 naming the first one refused."""
        if not refs:
            return []
        sources = await gather_or_cancel([self._source(ref) for ref in refs])
        if self.rule is not None:
            for source in sources:
                check_resized(
                    self.rule, source.size, source.ref.detail, source.ref.param, self.limits
                )
        check_request_pixels([s.size for s in sources], [r.param for r in refs], self.limits)
        decoding: dict[Hashable, asyncio.Future[Decoded]] = {}
        for source in sources:
            if source.cached is None and source.key not in decoding:
                decoding[source.key] = asyncio.ensure_future(self._decode(source))
        if self.metrics is not None:
            self.metrics.image_cache_hits.inc(len(sources) - len(decoding))
            self.metrics.image_cache_misses.inc(len(decoding))
        decoded = dict(zip(decoding, await gather_or_cancel(list(decoding.values())), strict=True))
        out = []
        for source in sources:
            entry = source.cached or CachedImage(decoded[source.key], source.size)
            if source.cached is None:
                self.cache.put(source.key, entry)
            out.append(entry.decoded.image())
        return out

    async def _source(self, ref: ImageRef) -> _Source:
        """The image's bytes (unless the caches make them unnecessary), digest and size."""
        freshness = 0.0
        if ref.url[:5].lower() == "data:":
            data = await asyncio.to_thread(decode_data_url, ref.url, ref.param, self.limits)
        else:
            known = self.urls.get(ref.url)
            cached = self.cache.get((known, ref.detail)) if known is not None else None
            if known is not None and cached is not None:
                return _Source(ref, known, cached.original, cached=cached)
            data, freshness = await self.media.fetch_fresh(ref.url, ref.param)
        try:
            digest, size = await asyncio.to_thread(_identify, data, self.limits)
        except ImageRefused as exc:
            raise refusal_to_400(exc, ref.param) from None
        self.urls.put(ref.url, digest, freshness)
        source = _Source(ref, digest, size, data=data)
        source.cached = self.cache.get(source.key)
        return source

    def _targets(self, source: _Source) -> Targets | None:
        if self.rule is None or not self.downscale:
            return None
        return shrink_targets(self.rule, source.size, source.ref.detail)

    async def _decode(self, source: _Source) -> Decoded:
        loop = asyncio.get_running_loop()
        targets = self._targets(source)
        small = targets is None and source.size[0] * source.size[1] <= THREAD_DECODE_PIXELS
        pool: Executor | None = None  # the default executor: a thread of this process
        if self.workers and not small:
            if self._pool is None:
                self.start()
            pool = self._pool
        assert source.data is not None, "only images the cache lacks are decoded"
        try:
            data, limits = source.data, self.limits
            return await loop.run_in_executor(pool, decode_scaled, data, limits, targets)
        except ImageRefused as exc:
            raise refusal_to_400(exc, source.ref.param) from None
        except BrokenProcessPool:
            # A worker died (killed for memory, most likely); start a fresh pool for others.
            logger.error("an image decoding worker died; restarting the pool")
            self.close()
            raise OverloadedError(
                "The image decoding workers restarted; try again.",
                retry_after=1,
                code="image_workers_restarted",
            ) from None


async def gather_or_cancel(coros: Sequence[Coroutine[Any, Any, T] | asyncio.Future[T]]) -> list[T]:
    """Run ``coros`` together; when one fails, cancel the others (a slow fetch among them)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
