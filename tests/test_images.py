"""Image decoding (every accepted format to RGB, EXIF orientation, limits) and the token budget."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from vlmserve.api.errors import BadRequestError
from vlmserve.api.metrics import Metrics
from vlmserve.bench.photos import photo_pixels
from vlmserve.engine.base import ImageInput
from vlmserve.engine.errors import RequestRejected
from vlmserve.engine.prepare import check_image_tokens
from vlmserve.images.codec import ImageLimits, ImageRefused, decode_image
from vlmserve.images.fetch import MediaFetcher, MediaPolicy
from vlmserve.images.pipeline import ImagePipeline, ImageRef
from vlmserve.models.families import get_family

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=4_000_000)
PARAM = "messages[0].content[1].image_url"


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def decode(data: bytes, limits: ImageLimits = LIMITS) -> Image.Image:
    return decode_image(data, limits)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_formats_decode_to_rgb(fmt: str) -> None:
    image = decode(encode(Image.new("RGB", (40, 30), (200, 30, 30)), fmt))
    assert image.mode == "RGB" and image.size == (40, 30)
    red, green, blue = image.getpixel((20, 15))
    assert red > 150 and green < 80 and blue < 80


def test_png_modes_decode_to_rgb() -> None:
    gray = decode(encode(Image.new("L", (8, 8), 100), "PNG"))
    assert gray.getpixel((0, 0)) == (100, 100, 100)
    palette = Image.new("RGB", (8, 8), (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert decode(encode(palette, "PNG")).getpixel((0, 0)) == (0, 0, 255)
    sixteen = Image.fromarray(np.full((8, 8), 0x8000, dtype=np.uint16))
    assert decode(encode(sixteen, "PNG")).getpixel((0, 0)) == (127, 127, 127)


def test_transparency_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    image = decode(encode(rgba, "PNG"))
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ("red", "blue", "green")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode(data).getpixel((5, 5)) == (255, 0, 0)


def test_exif_rotated_jpeg_comes_out_rotated() -> None:
    """Orientation 6 means "rotate 90 degrees clockwise to display"."""
    image = Image.new("RGB", (60, 20), "white")
    image.paste((255, 0, 0), (0, 0, 10, 20))  # the red band is on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    shown = decode(encode(image, "JPEG", exif=exif, quality=95))
    assert shown.size == (20, 60)
    red, green, _ = shown.getpixel((10, 3))  # left turns to top after a clockwise turn
    assert red > 200 and green < 60


def test_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decompression bomb is refused from its header: the pixels are never loaded."""
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    assert len(data) < 100_000
    loaded = threading.Event()
    real_load = Image.Image.load

    def load(self: Image.Image):  # type: ignore[no-untyped-def]
        loaded.set()
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", load)
    with pytest.raises(ImageRefused) as err:
        decode(data, ImageLimits(max_bytes=5_000_000, max_pixels=1_000_000))
    assert err.value.code == "image_too_large"
    assert not loaded.is_set()


def test_byte_limit_and_unsupported_formats() -> None:
    data = encode(Image.new("RGB", (200, 200)), "BMP")
    with pytest.raises(ImageRefused) as err:
        decode(data, ImageLimits(max_bytes=1000, max_pixels=4_000_000))
    assert err.value.code == "image_too_large"
    with pytest.raises(ImageRefused) as err:
        decode(encode(Image.new("RGB", (8, 8)), "TIFF"))
    assert err.value.code == "invalid_image"


def test_image_token_budget_names_the_image_that_goes_over() -> None:
    params = [f"messages[0].content[{j}].image_url" for j in range(3)]
    images = [ImageInput(Image.new("RGB", (64, 64)), param=p) for p in params]
    counts = [576, 576, 576]
    assert check_image_tokens(counts, images, None) == 3 * 576
    assert check_image_tokens(counts, images, 3 * 576) == 3 * 576
    with pytest.raises(RequestRejected) as err:
        check_image_tokens(counts, images, 2 * 576 + 1)
    assert err.value.param == "messages[0].content[2].image_url"
    assert err.value.code == "too_many_image_tokens"
    with pytest.raises(RequestRejected) as err:  # a total that cannot be split per image
        check_image_tokens([3 * 576], images, 2 * 576 + 1)
    assert err.value.param == "messages"


def pipeline(workers: int, cache_bytes: int = 0) -> ImagePipeline:
    policy = MediaPolicy(max_bytes=LIMITS.max_bytes, timeout=1.0)
    return ImagePipeline(
        LIMITS,
        MediaFetcher(policy),
        get_family("llava"),
        Metrics(lambda: None),
        workers=workers,
        cache_bytes=cache_bytes,
    )


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(encode(image, fmt)).decode()


@pytest.mark.parametrize("workers", [0, 2])
def test_small_images_are_decoded_in_a_thread(
    monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Without workers every image is; with them, one that needs no shrink (480x360 for LLaVA)
    and has at most THREAD_DECODE_PIXELS: the worker processes never start."""
    import vlmserve.images.pipeline as module

    threads: list[threading.Thread] = []
    real = module.decode_scaled

    def spy(*args):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(module, "decode_scaled", spy)
    size = (480, 360)
    assert size[0] * size[1] <= module.THREAD_DECODE_PIXELS
    refs = [ImageRef(data_url(Image.new("RGB", size)), "auto", PARAM)]
    loader = pipeline(workers=workers)
    try:
        (image,) = asyncio.run(loader.load(refs))
    finally:
        loader.close()
    assert image.size == size and not loader.worker_pids()
    assert threads and threads[0] is not threading.main_thread()


def test_decoding_runs_in_worker_processes_and_is_cached() -> None:
    """Two workers decode a phone photo shrunk to LLaVA's working size; a resend is a hit."""
    photo = Image.fromarray(photo_pixels(1600, 1200, 3))
    loader = pipeline(workers=2, cache_bytes=10_000_000)
    refs = [ImageRef(data_url(photo, "JPEG"), "auto", PARAM)]

    async def twice() -> tuple[Image.Image, Image.Image]:
        loader.start()
        try:
            (first,) = await loader.load(refs)
            (second,) = await loader.load(refs)
            pids = loader.worker_pids()
            assert len(pids) == 2 and os.getpid() not in pids
            return first, second
        finally:
            loader.close()

    first, second = asyncio.run(twice())
    assert first.size == second.size == (448, 336)
    assert loader.metrics.image_cache_hits._value.get() == 1
    assert loader.metrics.image_cache_misses._value.get() == 1


ORPHAN_SCRIPT = """
import asyncio, sys
from vlmserve.images.codec import ImageLimits
from vlmserve.images.fetch import MediaFetcher, MediaPolicy
from vlmserve.images.pipeline import ImagePipeline

async def main():
    loader = ImagePipeline(
        ImageLimits(max_bytes=1000, max_pixels=1000),
        MediaFetcher(MediaPolicy(max_bytes=1000, timeout=1.0)),
        None,
        workers=2,
    )
    await asyncio.gather(*map(asyncio.wrap_future, loader.start()))
    print(*loader.worker_pids(), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_workers_exit_when_the_server_is_killed() -> None:
    """A server killed outright (SIGKILL) leaves no decoding worker behind."""
    server = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        pids = [int(pid) for pid in server.stdout.readline().split()]
        assert len(pids) == 2 and all(os.path.exists(f"/proc/{pid}") for pid in pids)
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def test_a_refusal_from_a_worker_names_the_image() -> None:
    refs = [
        ImageRef(data_url(Image.new("RGB", (8, 8))), "auto", "messages[0].content[0].image_url"),
        ImageRef(
            "data:image/png;base64," + base64.b64encode(b"not an image").decode(), "auto", PARAM
        ),
    ]
    with pytest.raises(BadRequestError) as err:
        asyncio.run(pipeline(workers=0).load(refs))
    assert err.value.code == "invalid_image" and err.value.param == PARAM
