"""Photo-like test images at real camera sizes, since no real photos ship with vlmserve.

A photo is smooth at large scales and detailed at small ones, and a camera adds sensor grain, so
a JPEG of one weighs megabytes. The images here are made the same way: colour fields at three
scales (the coarse one carries most of the contrast), upsampled bicubically and summed, plus
Gaussian grain, saved as a quality-90 JPEG. A 4032x3024 one weighs about as much as a phone
photo (a few MB): decoding it costs what decoding a real one costs, which is the point.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: Name -> (width, height) of common camera outputs.
PRESETS: dict[str, tuple[int, int]] = {
    "phone": (4032, 3024),  # 12 MP, most phones' main camera
    "phone-portrait": (3024, 4032),
    "phone-48mp": (8064, 6048),
    "dslr": (6000, 4000),  # 24 MP APS-C
    "fullhd": (1920, 1080),
    "screenshot": (1170, 2532),  # a phone screenshot
}
#: (rows, cols) of each colour field and its share of the contrast, coarse to fine.
_OCTAVES = (((6, 8), 1.0), ((48, 64), 0.35), ((384, 512), 0.15))
_GRAIN_SIGMA = 5.0


def photo_pixels(width: int, height: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8 pixels of a photo-like image."""
    rng = np.random.default_rng(seed)
    total = np.zeros((height, width, 3), np.float32)
    for (rows, cols), weight in _OCTAVES:
        field = rng.integers(0, 256, (rows, cols, 3), dtype=np.uint8)
        big = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
        total += (np.asarray(big, np.float32) - 128.0) * weight
    total *= 1.0 / sum(w for _, w in _OCTAVES)
    total += 128.0 + rng.standard_normal(total.shape, dtype=np.float32) * _GRAIN_SIGMA
    return np.clip(total, 0, 255).astype(np.uint8)


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A photo-like JPEG of ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.fromarray(photo_pixels(width, height, seed)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def photo_pool(width: int, height: int, count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct photo-like JPEGs of one size.

    One photo is made, then each copy is shifted, mirrored and tinted differently: every JPEG
    has its own bytes (servers that cache by image hash see distinct images) and costs what a
    real photo costs to decode, while the pool is made in seconds, not minutes.
    """
    base = photo_pixels(width, height, seed)
    out = []
    for k in range(max(count, 1)):
        pixels = np.roll(base, (37 * k, 53 * k), axis=(0, 1))
        if k % 2:
            pixels = pixels[:, ::-1]
        tint = np.array([(k * 7) % 11, (k * 5) % 13, (k * 3) % 7], np.int16) - 5
        pixels = np.clip(pixels.astype(np.int16) + tint, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out
