"""Decoding image bytes: header checks, decode, EXIF orientation, RGB, the shrink to a size.

This module is what the decoding worker processes import, so it knows nothing of HTTP or models:
a refusal is an :class:`ImageRefused` with a code, which the server turns into a 400 naming the
image; sizes to shrink to come worked out by the server (:class:`Targets`). :func:`decode_scaled`
takes and returns plain picklable values: the encoded bytes in, raw RGB bytes out.

Only JPEG, PNG, WebP, GIF and BMP are opened: Pillow's other formats (EPS runs Ghostscript) are
more attack surface than a vision model needs. JPEG files use Pillow's draft mode: libjpeg decodes
at 1/2, 1/4 or 1/8 scale straight from the DCT coefficients, far cheaper than decoding every
pixel and shrinking afterwards. The draft is asked for :data:`DRAFT_MARGIN` times the target size,
so the final shrink is an ordinary bicubic resample over real pixels.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from vlmserve.config import Settings

#: How often a decoding worker checks that the server that started it is still alive (seconds).
PARENT_CHECK_S = 1.0


def exit_with_parent(parent: int) -> None:
    """Worker initializer: end this process once ``parent`` (the server's pid) is gone.

    A server killed outright (SIGKILL, the OOM killer) cannot shut its pool down, and the workers
    would live on as orphans. A daemon thread watches the parent id instead. ``parent`` comes from
    the server rather than ``os.getppid()`` here: a server killed while a worker is still starting
    has already left it to init.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
#: How much larger than the target size a JPEG draft must stay.
DRAFT_MARGIN = 2
#: EXIF orientations that swap width and height.
_TRANSPOSING = {5, 6, 7, 8}
_ORIENTATION = 0x0112
Size = tuple[int, int]


class ImageRefused(Exception):
    """An image broke a limit or could not be read; ``code`` is the API error code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, code)
        self.message = message
        self.code = code


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


@dataclass(frozen=True)
class Targets:
    """The size to shrink an image to as stored, and if its EXIF orientation turns it.

    Which applies is known only once the EXIF data is read, in the worker.
    """

    stored: Size
    turned: Size


@dataclass(frozen=True)
class Decoded:
    """A decoded image as raw RGB bytes."""

    size: Size
    data: bytes

    def image(self) -> Image.Image:
        """The image as a PIL RGB image."""
        return Image.frombytes("RGB", self.size, self.data)

    @property
    def nbytes(self) -> int:
        """Bytes the decoded pixels take."""
        return len(self.data)


def too_large(message: str) -> ImageRefused:
    """The refusal for an image over a size limit."""
    return ImageRefused(message, "image_too_large")


@contextlib.contextmanager
def unreadable_refused() -> Iterator[None]:
    """Turn Pillow's many ways of failing on a bad file into one :class:`ImageRefused`."""
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
        raise ImageRefused("The data is not a readable image.", "invalid_image") from None


def open_header(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open an image from its header only, refused when its size breaks a per-image limit."""
    if len(data) > limits.max_bytes:
        raise too_large(f"Image is larger than the {limits.max_bytes}-byte limit.")
    image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise too_large(
            f"Image is {width}x{height} pixels, more than the {limits.max_pixels}-pixel limit."
        )
    if width < 1 or height < 1 or max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise ImageRefused(
            f"Image is {width}x{height} pixels; its sides may differ by a factor of at most "
            f"{limits.max_aspect_ratio:g}.",
            "image_aspect_ratio_too_large",
        )
    return image


def probe_size(data: bytes, limits: ImageLimits) -> Size:
    """(width, height) from the image's header, with the per-image limits checked; no decoding."""
    with unreadable_refused():
        return open_header(data, limits).size


def decode_image(data: bytes, limits: ImageLimits, targets: Targets | None = None) -> Image.Image:
    """Decode to RGB, upright, shrunk to ``targets`` when given and smaller than the image."""
    with unreadable_refused():
        image = open_header(data, limits)
        if targets is not None and image.format == "JPEG":
            turned = image.getexif().get(_ORIENTATION) in _TRANSPOSING
            width, height = targets.turned if turned else targets.stored
            wanted = (width * DRAFT_MARGIN, height * DRAFT_MARGIN)
            image.draft("RGB", wanted[::-1] if turned else wanted)
        image.load()  # a GIF or animated WebP stays on its first frame
        upright = to_rgb(ImageOps.exif_transpose(image) or image)
        if targets is None:
            return upright
        # Transposed (unless square, where both targets are the same size).
        target = targets.turned if upright.size != image.size else targets.stored
        if target[0] < upright.width and target[1] <= upright.height:
            upright = upright.resize(target, Image.Resampling.BICUBIC)
        return upright


def decode_scaled(data: bytes, limits: ImageLimits, targets: Targets | None) -> Decoded:
    """:func:`decode_image` as raw bytes: what a worker process sends back."""
    image = decode_image(data, limits, targets)
    return Decoded(image.size, image.tobytes())


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
