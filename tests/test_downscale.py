"""The shrink to each family's working size changes nothing the model sees, within a tolerance.

For every family, photo-like images (one turned by EXIF) at both details go through the tiny
checkpoint's real processor twice: decoded at full size, and decoded shrunk to the working size
(JPEG draft mode included). The prompt's token count (image tokens included) must be identical,
and so must the pixel values' shape; the values themselves may differ by resampling only:

- mean absolute difference at most ``MEAN_TOLERANCE`` (0.01, under one 8-bit step),
- largest absolute difference at most ``MAX_TOLERANCE`` (0.1), about seven 8-bit steps once
  divided by CLIP's standard deviation (one step is 1 / (255 * 0.27) = 0.0145).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAMILIES
from vlmserve.bench.photos import photo_jpeg, photo_pixels
from vlmserve.images.codec import ImageLimits, Targets, decode_image
from vlmserve.images.pipeline import shrink_targets
from vlmserve.models.base import Detail, ModelFamily
from vlmserve.models.families import get_family

MEAN_TOLERANCE = 0.01
MAX_TOLERANCE = 0.1
LIMITS = ImageLimits(max_bytes=50_000_000, max_pixels=50_000_000)
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]

pytestmark = pytest.mark.slow


def rotated_jpeg(width: int, height: int) -> bytes:
    """A JPEG stored ``width`` x ``height`` whose EXIF says to turn it a quarter (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(photo_pixels(width, height, 7)).save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo_pixels(width, height, 5)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return {
        "phone 4032x3024 jpeg": photo_jpeg(4032, 3024, seed=1),
        "turned 2016x1512 jpeg": rotated_jpeg(2016, 1512),
        "wide 2000x600 jpeg": photo_jpeg(2000, 600, seed=2),
        "fullhd 1920x1080 png": png(1920, 1080),
    }


def targets_for(family: ModelFamily, data: bytes, detail: Detail) -> Targets | None:
    """What the server shrinks this image to (None: it decodes it whole)."""
    return shrink_targets(family, Image.open(io.BytesIO(data)).size, detail)


def process(family: ModelFamily, processor: Any, image: Image.Image, detail: Detail) -> Any:
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    image = family.prepare_image(image, detail)
    return processor(
        text=prompt, images=[image], return_tensors="pt", **family.processor_kwargs(detail)
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_the_shrink_keeps_tokens_and_pixels(
    name: str, tiny_model, photos: dict[str, bytes]
) -> None:
    family = get_family(name)
    _, processor = family.load(tiny_model(name), "cpu")
    shrunk_any = False
    for label, data in photos.items():
        for detail in ("high", "low"):
            full = decode_image(data, LIMITS)
            small = decode_image(data, LIMITS, targets_for(family, data, detail))
            shrunk_any = shrunk_any or small.size != full.size
            assert family.image_tokens(*small.size, detail) == family.image_tokens(
                *full.size, detail
            ), (label, detail)
            want = process(family, processor, full, detail)
            got = process(family, processor, small, detail)
            assert got["input_ids"].shape == want["input_ids"].shape, (label, detail)
            assert (got["input_ids"] == want["input_ids"]).all(), (label, detail)
            difference = (got["pixel_values"].float() - want["pixel_values"].float()).abs()
            assert difference.shape == want["pixel_values"].shape
            assert float(difference.mean()) <= MEAN_TOLERANCE, (label, detail)
            assert float(difference.max()) <= MAX_TOLERANCE, (label, detail)
    assert shrunk_any


def test_a_turned_jpeg_is_shrunk_upright() -> None:
    """EXIF orientation 6 on a 2016x1512 file: the image is 1512x2016 upright, shrunk so."""
    family = get_family("llava")
    data = rotated_jpeg(2016, 1512)
    small = decode_image(data, LIMITS, targets_for(family, data, "high"))
    assert small.size == family.working_size(1512, 2016) == (336, 448)


def test_working_sizes_keep_token_counts_for_many_sizes() -> None:
    """Over a spread of sizes, every family's working size keeps the count and covers the target."""
    rng = np.random.default_rng(0)
    for name in FAMILIES:
        family = get_family(name)
        for width, height in rng.integers(200, 6000, (150, 2)):
            for detail in ("high", "low"):
                w, h = family.working_size(int(width), int(height), detail)
                assert family.image_tokens(w, h, detail) == family.image_tokens(
                    int(width), int(height), detail
                )
                assert w <= width and h <= height
                if (w, h) != (width, height):
                    target = family.processed_size(int(width), int(height), detail)
                    assert family.processed_size(w, h, detail) == target
                    assert w >= target[0] and h >= target[1]
