"""Turning an ``image_url`` into a decoded RGB image, with limits checked before the work.

The encoded size is checked before decoding, the pixel count from the header before the pixels
are read (so a decompression bomb is refused cheaply), and decoding runs off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from server.errors import BadRequestError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]*)(?P<params>(;[\w=.-]+)*?);base64,", re.I)


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits from the settings."""

    max_bytes: int
    max_pixels: int


def decode_data_url(url: str, param: str, limits: ImageLimits) -> bytes:
    """The bytes of a base64 ``data:`` URL, or a 400 naming ``param``."""
    match = _DATA_URL.match(url)
    if not match:
        raise BadRequestError(
            "Image data URLs must look like data:image/png;base64,...", param=param
        )
    payload = url[match.end() :]
    if len(payload) * 3 // 4 > limits.max_bytes:
        raise BadRequestError(
            f"Image is larger than the {limits.max_bytes}-byte limit.",
            param=param,
            code="image_too_large",
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("Image data is not valid base64.", param=param) from None


def _open_checked(data: bytes, param: str, limits: ImageLimits) -> Image.Image:
    if len(data) > limits.max_bytes:
        raise BadRequestError(
            f"Image is larger than the {limits.max_bytes}-byte limit.",
            param=param,
            code="image_too_large",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise BadRequestError(
                    f"Image is {width}x{height} pixels, more than the {limits.max_pixels}-pixel "
                    "limit.",
                    param=param,
                    code="image_too_large",
                )
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return image.convert("RGB")
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


async def decode_image(data: bytes, param: str, limits: ImageLimits) -> Image.Image:
    """Decode image bytes to RGB in a worker thread (EXIF orientation applied)."""
    return await asyncio.to_thread(_open_checked, data, param, limits)


async def load_image(url: str, param: str, limits: ImageLimits) -> Image.Image:
    """Resolve an ``image_url`` to an RGB image; only ``data:`` URLs are accepted here."""
    if url[:5].lower() == "data:":
        return await decode_image(decode_data_url(url, param, limits), param, limits)
    raise BadRequestError(
        "Only data: image URLs are accepted by this server.",
        param=param,
        code="unsupported_image_url",
    )
