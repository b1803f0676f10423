"""Image decoding (every accepted format to RGB, EXIF orientation, limits) and the token budget."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
from PIL import Image

from vlmserve.api.errors import BadRequestError
from vlmserve.engine.base import ImageInput
from vlmserve.engine.errors import RequestRejected
from vlmserve.engine.prepare import check_image_tokens
from vlmserve.images.decode import ImageLimits, decode_image

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=4_000_000)
PARAM = "messages[0].content[0].image_url"


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def decode(data: bytes, limits: ImageLimits = LIMITS) -> Image.Image:
    return asyncio.run(decode_image(data, PARAM, limits))


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
    with pytest.raises(BadRequestError) as err:
        decode(data, ImageLimits(max_bytes=5_000_000, max_pixels=1_000_000))
    assert err.value.code == "image_too_large" and err.value.param == PARAM
    assert not loaded.is_set()


def test_byte_limit_and_unsupported_formats() -> None:
    data = encode(Image.new("RGB", (200, 200)), "BMP")
    with pytest.raises(BadRequestError) as err:
        decode(data, ImageLimits(max_bytes=1000, max_pixels=4_000_000))
    assert err.value.code == "image_too_large"
    with pytest.raises(BadRequestError) as err:
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


def test_decoding_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import vlmserve.images.decode as images

    threads: list[threading.Thread] = []
    real = images._open_checked

    def spy(*args):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(images, "_open_checked", spy)
    decode(encode(Image.new("RGB", (8, 8)), "PNG"))
    assert threads and threads[0] is not threading.main_thread()
