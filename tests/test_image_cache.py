"""The decoded-image cache on a real server: a resent image is a hit, not a decode; a URL whose
response allows caching is not fetched again while fresh; hits and misses show in /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.helpers import ServerProcess, image_data_url, start_server
from tests.image_server import ImageServer, image_server
from vlmserve.images.cache import CachedImage, DecodedCache, UrlCache, freshness_seconds
from vlmserve.images.codec import Decoded

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with image_server() as server:
        yield server


@pytest.fixture(scope="module")
def cached(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    logs: Path = tmp_path_factory.mktemp("cache")
    env = {"VLMSERVE_ALLOW_PRIVATE_MEDIA_URLS": "true", "VLMSERVE_IMAGE_WORKERS": "2"}
    server = start_server(["--model", str(tiny_model("llava"))], logs / "server.log", env=env)
    yield server
    server.stop()


def turn(server: ServerProcess, url: str, history: list[dict]) -> list[dict]:
    """One more user turn that resends the whole conversation, image included."""
    if history:
        messages = [*history, {"role": "user", "content": "And now?"}]
    else:
        image = {"type": "image_url", "image_url": {"url": url}}
        messages = [{"role": "user", "content": [{"type": "text", "text": "Look."}, image]}]
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model=server.model, messages=messages, max_tokens=2)
    assert reply.usage is not None and reply.usage.prompt_tokens > 576
    return messages + [{"role": "assistant", "content": reply.choices[0].message.content or ""}]


def counts(server: ServerProcess) -> tuple[float, float]:
    return (
        server.metric("vlmserve_image_cache_hits_total"),
        server.metric("vlmserve_image_cache_misses_total"),
    )


def test_a_conversation_decodes_its_image_once(cached: ServerProcess) -> None:
    hits, misses = counts(cached)
    history: list[dict] = []
    for _ in range(3):
        history = turn(cached, image_data_url(640, 480, "JPEG", "olive"), history)
    assert counts(cached) == (hits + 2, misses + 1)


def test_a_fresh_url_is_fetched_once_and_a_no_store_one_each_time(
    cached: ServerProcess, images: ImageServer
) -> None:
    fresh = images.url("/image.png?w=300&h=200&cache=max-age%3D600")
    uncached = images.url("/image.png?w=301&h=200&cache=no-store")
    for url in (fresh, uncached):
        history: list[dict] = []
        for _ in range(3):
            history = turn(cached, url, history)
    fetched = [path for path, _ in images.seen.requests]
    assert fetched.count("/image.png") == 1 + 3
    # The no-store image is fetched each turn, yet decoded once: its bytes hash the same.


def test_freshness_follows_cache_control_and_expires() -> None:
    assert freshness_seconds({"cache-control": "public, max-age=600"}) == 600
    assert freshness_seconds({"cache-control": "max-age=600", "age": "100"}) == 500
    assert freshness_seconds({"cache-control": "s-maxage=0, max-age=600"}) == 0
    assert freshness_seconds({"cache-control": "max-age=600, no-store"}) == 0
    assert freshness_seconds({"cache-control": "private, max-age=600"}) == 0
    assert freshness_seconds({}) == 0
    expires = {"expires": "Wed, 02 Dec 2026 12:00:00 GMT"}
    assert freshness_seconds(expires, now=1_796_212_800.0 - 60) == 60
    assert freshness_seconds({"expires": "garbage"}) == 0


def test_url_cache_forgets_at_expiry_and_decoded_cache_stays_in_bytes() -> None:
    now = [0.0]
    urls = UrlCache(2, clock=lambda: now[0])
    urls.put("a", b"digest-a", 10)
    urls.put("b", b"digest-b", 0)
    assert urls.get("a") == b"digest-a" and urls.get("b") is None
    now[0] = 10
    assert urls.get("a") is None
    cache = DecodedCache(max_bytes=250)
    for key in "xyz":
        cache.put(key, CachedImage(Decoded((10, 10), b"\0" * 100), (10, 10)))
    assert cache.bytes <= 250 and len(cache) == 2 and cache.get("x") is None
    assert cache.get("z") is not None
