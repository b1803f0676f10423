"""The response cache: keys, bounds, replay, and a real server answering repeats from it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.helpers import ServerProcess, start_server
from tests.image_server import ImageServer, image_server, png_bytes
from vlmserve.cache.answer import CachedAnswer
from vlmserve.cache.keys import image_digest, is_deterministic, request_key
from vlmserve.cache.store import MemoryStore


def test_an_image_is_keyed_by_its_pixels_not_its_encoding() -> None:
    image = Image.new("RGB", (40, 30), "teal")
    encodings = []
    for fmt in ("PNG", "BMP", "TIFF"):
        buf = io.BytesIO()
        image.save(buf, fmt)
        encodings.append(buf.getvalue())
    assert len(set(encodings)) == 3
    digests = {image_digest(Image.open(io.BytesIO(data))) for data in encodings}
    assert digests == {image_digest(image)}
    assert image_digest(image.convert("L")) != image_digest(image)
    assert image_digest(Image.new("RGB", (30, 40), "teal")) != image_digest(image)


def test_keys_follow_fields_and_images_not_their_order_in_json() -> None:
    one = request_key("m", {"a": 1, "b": [1, 2]}, ["x"])
    assert one == request_key("m", {"b": [1, 2], "a": 1}, ["x"])
    assert one != request_key("m", {"a": 1, "b": [2, 1]}, ["x"])
    assert one != request_key("m", {"a": 1, "b": [1, 2]}, ["y"])
    assert one != request_key("other-model", {"a": 1, "b": [1, 2]}, ["x"])


@pytest.mark.parametrize(
    ("temperature", "seed", "n", "cacheable"),
    [(0, None, 1, True), (0.7, 3, None, True), (None, None, 1, False), (0, None, 2, False)],
)
def test_only_deterministic_requests_are_cacheable(
    temperature: float | None, seed: int | None, n: int | None, cacheable: bool
) -> None:
    assert is_deterministic(temperature, seed, n) is cacheable


def test_memory_store_is_bounded_by_entries_bytes_and_time() -> None:
    now = [0.0]
    store = MemoryStore(max_entries=3, max_bytes=100, ttl=10, timer=lambda: now[0])
    for i in range(4):
        store.put(f"k{i}", b"x" * 10)
    assert store.get("k0") is None and store.get("k3") == b"x" * 10  # oldest evicted
    store.put("big", b"y" * 90)
    assert store.nbytes <= 100 and store.get("big") is not None
    store.put("huge", b"z" * 101)  # larger than the whole cache: not kept
    assert store.get("huge") is None
    now[0] = 11
    assert store.get("big") is None and store.nbytes == 0


def test_a_cached_answer_replays_as_a_stream() -> None:
    answer = CachedAnswer("m", "Hello there", "stop", 12, 3)

    async def collect(include_usage: bool) -> list[str]:
        return [event async for event in answer.events(include_usage)]

    events = asyncio.run(collect(True))
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello there"
    assert chunks[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert len({c["id"] for c in chunks}) == 1
    assert len(asyncio.run(collect(False))) == len(events) - 1
    assert CachedAnswer.decode(answer.encode()) == answer


# -- a real server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with image_server() as server:
        yield server


@pytest.fixture(scope="module")
def cached_server(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("cache")
    # Private URLs allowed only so that the loopback image server can be reached.
    env = {"VLMSERVE_ALLOW_PRIVATE_MEDIA_URLS": "true"}
    server = start_server(["--model", str(tiny_model("llava"))], logs / "server.log", env=env)
    yield server
    server.stop()


def body(model: str, url: str, **extra: object) -> dict:
    content = [
        {"type": "text", "text": "Caption this."},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 6,
        **extra,
    }


def post(server: ServerProcess, payload: dict, headers: dict | None = None) -> httpx.Response:
    url = f"{server.base_url}/chat/completions"
    return httpx.post(url, json=payload, headers=headers, timeout=60)


def streamed_text(response: httpx.Response) -> tuple[str, dict | None]:
    text, usage = "", None
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                text += choice["delta"].get("content") or ""
    return text, usage


@pytest.mark.slow
def test_a_repeated_deterministic_request_is_a_hit(cached_server: ServerProcess) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(50, 40, "navy")).decode()
    request = body(cached_server.model, data_url, temperature=0)
    first, second = post(cached_server, request), post(cached_server, request)
    assert first.headers["x-vlmserve-cache"] == "miss"
    assert second.headers["x-vlmserve-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"]
    assert second.json()["id"] != first.json()["id"]
    assert cached_server.metric("vlmserve_response_cache_hits_total") >= 1
    assert cached_server.metric("vlmserve_response_cache_bytes") > 0

    # The same request streamed: the cached answer as events, usage only when asked for.
    streamed = post(cached_server, {**request, "stream": True})
    assert streamed.headers["x-vlmserve-cache"] == "hit"
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed_text(streamed) == (first.json()["choices"][0]["message"]["content"], None)
    with_usage = {**request, "stream": True, "stream_options": {"include_usage": True}}
    assert streamed_text(post(cached_server, with_usage))[1] == first.json()["usage"]

    fresh = post(cached_server, request, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["x-vlmserve-cache"] == "skip"
    assert fresh.json()["choices"] == first.json()["choices"]  # greedy: the same answer, rerun


@pytest.mark.slow
def test_a_streamed_miss_is_stored_for_the_next_request(cached_server: ServerProcess) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(20, 60, "olive")).decode()
    request = body(cached_server.model, data_url, seed=11, temperature=0.8, stream=True)
    first = post(cached_server, request)
    assert first.headers["x-vlmserve-cache"] == "miss"
    text, usage = streamed_text(first)
    assert usage is None  # the usage the cache needs is not passed on unasked
    again = post(cached_server, {**request, "stream": False})
    assert again.headers["x-vlmserve-cache"] == "hit"
    assert again.json()["choices"][0]["message"]["content"] == text


@pytest.mark.slow
def test_sampled_requests_are_not_cached(cached_server: ServerProcess) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(30, 30, "red")).decode()
    for extra in (
        {},
        {"temperature": 0.9},
        {"temperature": 0, "n": 2},
    ):
        for _ in range(2):
            answer = post(cached_server, body(cached_server.model, data_url, **extra))
            assert answer.status_code == 200, (extra, answer.text)
            assert answer.headers["x-vlmserve-cache"] == "skip", extra


@pytest.mark.slow
def test_the_same_image_by_url_or_data_url_is_the_same_key(
    cached_server: ServerProcess, images: ImageServer
) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(64, 48)).decode()
    by_data = post(cached_server, body(cached_server.model, data_url, temperature=0, max_tokens=5))
    assert by_data.headers["x-vlmserve-cache"] == "miss"
    url = images.url("/image.png?w=64&h=48")
    by_url = post(cached_server, body(cached_server.model, url, temperature=0, max_tokens=5))
    assert by_url.headers["x-vlmserve-cache"] == "hit"
    assert by_url.json()["choices"] == by_data.json()["choices"]
