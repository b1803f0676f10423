"""Turning an ``image_url`` into a decoded RGB image, with limits checked before the work.

The encoded size is checked before decoding, the pixel count from the header before the pixels
are read (so a decompression bomb is refused cheaply), and decoding runs off the event loop. Only
JPEG, PNG, WebP, GIF and BMP are opened: Pillow's other formats (EPS runs Ghostscript) are more
attack surface than a vision model needs. ``http(s)`` and ``file`` URLs go through
:mod:`vlmserve.images.fetch`; :mod:`vlmserve.images.pipeline` puts the steps together.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmserve.api.errors import BadRequestError
from vlmserve.config import Settings
from vlmserve.images.fetch import too_large

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]*)(?P<params>(;[\w=.-]+)*?);base64,", re.I)


@dataclass(frozen=True)
class ImageLimits:
    """Image limits from the settings: per image, and per request."""

    max_bytes: int
    max_pixels: int
    max_aspect_ratio: float = math.inf
    max_resized_pixels: int | None = None
    max_request_pixels: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        """The limits the settings describe."""
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_aspect_ratio=settings.max_image_aspect_ratio,
            max_resized_pixels=settings.max_resized_image_pixels,
            max_request_pixels=settings.max_image_pixels_per_request,
        )


def decode_data_url(url: str, param: str, limits: ImageLimits) -> bytes:
    """The bytes of a base64 ``data:`` URL, or a 400 naming ``param``."""
    match = _DATA_URL.match(url)
    if not match:
        raise BadRequestError(
            "Image data URLs must look like data:image/png;base64,...", param=param
        )
    payload = url[match.end() :]
    if len(payload) * 3 // 4 > limits.max_bytes:
        raise too_large(limits.max_bytes, param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("Image data is not valid base64.", param=param) from None


@contextlib.contextmanager
def _unreadable_as_400(param: str) -> Iterator[None]:
    """Turn Pillow's many ways of failing on a bad file into one 400 naming the image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ):
        raise BadRequestError(
            "The data is not a readable image.", param=param, code="invalid_image"
        ) from None


def _open_header(data: bytes, param: str, limits: ImageLimits) -> Image.Image:
    """Open an image from its header only, refusing it when its size breaks a per-image limit."""
    if len(data) > limits.max_bytes:
        raise too_large(limits.max_bytes, param)
    image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise BadRequestError(
            f"Image is {width}x{height} pixels, more than the {limits.max_pixels}-pixel limit.",
            param=param,
            code="image_too_large",
        )
    if width < 1 or height < 1 or max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise BadRequestError(
            f"Image is {width}x{height} pixels; its sides may differ by a factor of at most "
            f"{limits.max_aspect_ratio:g}.",
            param=param,
            code="image_aspect_ratio_too_large",
        )
    return image


def probe_size(data: bytes, param: str, limits: ImageLimits) -> tuple[int, int]:
    """(width, height) from the image's header, with the per-image limits checked; no decoding."""
    with _unreadable_as_400(param):
        return _open_header(data, param, limits).size


def _open_checked(data: bytes, param: str, limits: ImageLimits) -> Image.Image:
    with _unreadable_as_400(param):
        image = _open_header(data, param, limits)
        image.load()  # a GIF or animated WebP stays on its first frame
        upright = ImageOps.exif_transpose(image) or image
        return to_rgb(upright)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit samples scaled down, transparency flattened onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's convert() clips 16-bit values at 255 instead of scaling them.
        # Among the formats opened here only 16-bit PNG gives these modes.
        samples = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((samples // 257).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


async def decode_image(data: bytes, param: str, limits: ImageLimits) -> Image.Image:
    """Decode image bytes to RGB in a worker thread (EXIF orientation applied)."""
    return await asyncio.to_thread(_open_checked, data, param, limits)
