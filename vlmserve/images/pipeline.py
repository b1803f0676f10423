"""From a request's ``image_url`` parts to decoded images, every limit checked before decoding.

The bytes of all images are gathered first (``data:`` URLs decoded, ``http(s)``/``file`` URLs
fetched), then each header is read and checked (size, aspect ratio, the pixels the family's
processor would scale it to) and the request's total pixels are checked, and only then is any
image decoded. So a request that breaks a limit costs header reads, never a decode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image

from vlmserve.engine.base import Detail
from vlmserve.images.decode import ImageLimits, decode_data_url, decode_image, probe_size
from vlmserve.images.fetch import MediaFetcher
from vlmserve.images.limits import ResizeRule, check_request_pixels, check_resized

T = TypeVar("T")


@dataclass(frozen=True)
class ImageRef:
    """One image part of a request: its URL, the detail it asks for, and its ``param``."""

    url: str
    detail: Detail
    param: str


class ImagePipeline:
    """Loads a request's images under the server's limits."""

    def __init__(self, limits: ImageLimits, media: MediaFetcher, rule: ResizeRule | None) -> None:
        self.limits = limits
        self.media = media
        self.rule = rule

    async def load(self, refs: Sequence[ImageRef]) -> list[Image.Image]:
        """The decoded RGB images of ``refs``, in order; a 400 naming the first one refused."""
        if not refs:
            return []
        data = await gather_or_cancel([self._bytes(ref) for ref in refs])
        sizes = await asyncio.to_thread(self._check_headers, data, refs)
        check_request_pixels(sizes, [ref.param for ref in refs], self.limits)
        return await gather_or_cancel(
            [decode_image(d, ref.param, self.limits) for d, ref in zip(data, refs, strict=True)]
        )

    async def _bytes(self, ref: ImageRef) -> bytes:
        if ref.url[:5].lower() == "data:":
            return decode_data_url(ref.url, ref.param, self.limits)
        return await self.media.fetch(ref.url, ref.param)

    def _check_headers(self, data: list[bytes], refs: Sequence[ImageRef]) -> list[tuple[int, int]]:
        sizes = []
        for item, ref in zip(data, refs, strict=True):
            size = probe_size(item, ref.param, self.limits)
            if self.rule is not None:
                check_resized(self.rule, size, ref.detail, ref.param, self.limits)
            sizes.append(size)
        return sizes


async def gather_or_cancel(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` together; when one fails, cancel the others (a slow fetch among them)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
