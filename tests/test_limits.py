"""Request and image bounds on a real server: body limit (plain and chunked), aspect ratio, the
pixels an image becomes in the family's processor, and total pixels per request.

The server runs with small image-byte and per-request pixel limits so the tests send little; the
body limit is the default one derived from them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import ServerProcess, image_data_url, start_server

MAX_IMAGE_BYTES = 1_000_000
MAX_IMAGES = 4
REQUEST_PIXELS = 20_000_000
RESIZED_PIXELS = 4_000_000
#: What the server derives from MAX_IMAGES and MAX_IMAGE_BYTES (see Settings.request_body_limit).
BASE64_IMAGE = 4 * -(-MAX_IMAGE_BYTES // 3) + len("data:image/jpeg;base64,")
BODY_LIMIT = MAX_IMAGES * BASE64_IMAGE + (1 << 20)
HUGE = 300_000_000
CHUNK = b"x" * (1 << 20)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bounded(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    logs: Path = tmp_path_factory.mktemp("bounded")
    settings = {
        "MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES),
        "MAX_IMAGE_PIXELS_PER_REQUEST": str(REQUEST_PIXELS),
        "MAX_RESIZED_IMAGE_PIXELS": str(RESIZED_PIXELS),
    }
    env = {f"VLMSERVE_{k}": v for k, v in settings.items()}
    server = start_server(["--model", str(tiny_model("llava"))], logs / "server.log", env=env)
    yield server
    server.stop()


def ask(server: ServerProcess, *images: str) -> openai.types.chat.ChatCompletion:
    parts: list[dict] = [{"type": "text", "text": "Describe."}]
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in images]
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    return client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": parts}], max_tokens=1
    )


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def peak_rss_kib(server: ServerProcess) -> int:
    """The server process's peak resident memory (VmHWM), in KiB."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1])


def huge_body() -> Iterator[bytes]:
    """300 MB of a JSON-looking body, made on the fly so the test itself stays small."""
    yield b'{"model": "m", "messages": [{"role": "user", "content": "'
    for _ in range(HUGE // len(CHUNK)):
        yield CHUNK


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_body_is_413_and_never_held(bounded: ServerProcess, declared: bool) -> None:
    before = peak_rss_kib(bounded)
    headers = {"content-type": "application/json"}
    if declared:
        headers["content-length"] = str(HUGE + 56)
    response = httpx.post(
        f"{bounded.base_url}/chat/completions", content=huge_body(), headers=headers, timeout=60
    )
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "request_too_large" and str(BODY_LIMIT) in error["message"]
    # The server read at most the limit: its peak memory grew by far less than the body.
    assert peak_rss_kib(bounded) - before < 4 * BODY_LIMIT // 1024
    assert ask(bounded, image_data_url(64, 48)).usage.prompt_tokens > 576


def test_a_body_at_the_limit_is_read(bounded: ServerProcess) -> None:
    """Just under the limit the body is parsed as usual (here: a 400 for its unknown model)."""
    text = "x" * (BODY_LIMIT - 200)
    body = json.dumps({"model": "nope", "messages": [{"role": "user", "content": text}]})
    assert len(body) <= BODY_LIMIT
    response = httpx.post(
        f"{bounded.base_url}/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 404, response.text
    assert error_of(response)["param"] == "model"


def test_a_thin_strip_is_refused_before_decoding(bounded: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(bounded, image_data_url(8, 8), image_data_url(1, 60000))
    error = err.value.body
    assert isinstance(error, dict)
    assert error["code"] == "image_aspect_ratio_too_large"
    assert error["param"] == "messages[0].content[2].image_url"


def test_an_image_the_processor_would_blow_up_is_refused(bounded: ServerProcess) -> None:
    """20x1990 is within the aspect bound, but LLaVA would scale it to 336x33432."""
    with pytest.raises(openai.BadRequestError) as err:
        ask(bounded, image_data_url(20, 1990))
    error = err.value.body
    assert isinstance(error, dict)
    assert error["code"] == "image_too_large" and "336x33432" in error["message"]
    assert error["param"] == "messages[0].content[1].image_url"


def test_too_many_pixels_in_all_names_the_image_that_goes_over(bounded: ServerProcess) -> None:
    medium = image_data_url(3000, 3000)  # 9 megapixels, a few kilobytes of PNG
    assert ask(bounded, medium, medium).usage.prompt_tokens > 2 * 576
    with pytest.raises(openai.BadRequestError) as err:
        ask(bounded, medium, medium, medium)
    error = err.value.body
    assert isinstance(error, dict)
    assert error["code"] == "too_many_image_pixels"
    assert error["param"] == "messages[0].content[3].image_url"
