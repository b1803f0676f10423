"""State shared across replicas through a real Redis: one rate limit per key, outages degrade."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import ServerProcess, free_port, image_data_url, start_server
from tests.redis_server import RedisServer
from vlmserve.api.access import RateLimiter
from vlmserve.api.errors import RateLimitError
from vlmserve.state.limits import SharedRateLimiter
from vlmserve.state.link import RedisLink

pytestmark = pytest.mark.slow


def shared_limiter(url: str, rpm: int | None, tpm: int | None) -> SharedRateLimiter:
    return SharedRateLimiter(RateLimiter(rpm, tpm), RedisLink(url, "test", 0.5, 5.0))


def test_two_limiters_share_one_request_budget(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        a = shared_limiter(redis_server.url, 3, None)
        b = shared_limiter(redis_server.url, 3, None)
        await a.admit("key-0")
        await b.admit("key-0")
        await a.admit("key-0")
        for limiter in (a, b):
            with pytest.raises(RateLimitError) as err:
                await limiter.admit("key-0")
            assert int(err.value.headers()["Retry-After"]) >= 1
        await b.admit("key-1")  # another key has its own budget

    asyncio.run(scenario())
    keys = sorted(k.decode() for k in redis_server.client().keys("test:*"))
    assert keys == ["test:ratelimit:key-0:requests", "test:ratelimit:key-1:requests"]
    assert redis_server.client().pttl(keys[0]) > 0  # idle buckets expire


def test_token_charges_on_one_limiter_hold_back_the_other(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        a = shared_limiter(redis_server.url, None, 100)
        b = shared_limiter(redis_server.url, None, 100)
        await b.admit("key-0")
        a.charge("key-0", 150)
        await a.settle()
        with pytest.raises(RateLimitError, match="tokens per minute"):
            await b.admit("key-0")

    asyncio.run(scenario())


def test_redis_outage_falls_back_to_local_limits(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        limiter = shared_limiter(redis_server.url, 2, None)
        await limiter.admit("key-0")
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="vlmserve.state.link"):
            await limiter.admit("key-0")  # the local bucket starts full
            await limiter.admit("key-0")
            with pytest.raises(RateLimitError):
                await limiter.admit("key-0")  # local limits still hold
        warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert len(warnings) == 1  # once per outage, not once per request

    asyncio.run(scenario())


# -- two real replicas ---------------------------------------------------------------------------

KEYS = ("sk-a", "sk-b", "sk-cache")


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis") / "redis.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(
    tiny_model, shared_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    logs = tmp_path_factory.mktemp("replicas")
    env = {
        "VLMSERVE_API_KEYS": ",".join(KEYS),
        "VLMSERVE_RATE_LIMIT_REQUESTS_PER_MINUTE": "3",
        "VLMSERVE_REDIS_URL": shared_redis.url,
        "VLMSERVE_SERVED_MODEL_NAME": "tiny-llava",
    }
    servers: list[ServerProcess] = []
    try:
        for i in range(2):
            args = ["--model", str(tiny_model("llava"))]
            servers.append(start_server(args, logs / f"replica{i}.log", env=env))
        yield servers
    finally:
        for server in servers:
            server.stop()


def chat(
    server: ServerProcess, key: str, model: str = "tiny-llava", **extra: object
) -> httpx.Response:
    body = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe."},
                    {"type": "image_url", "image_url": {"url": image_data_url(32, 32)}},
                ],
            }
        ],
        "max_tokens": 2,
        **extra,
    }
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=headers, timeout=60)


def test_a_hit_on_one_replica_is_a_hit_on_the_other(replicas: list[ServerProcess]) -> None:
    one, two = replicas
    first = chat(one, "sk-cache", temperature=0, seed=5)
    assert first.headers["x-vlmserve-cache"] == "miss"
    second = chat(two, "sk-cache", temperature=0, seed=5)
    assert second.headers["x-vlmserve-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]


def test_replicas_enforce_one_rate_limit_per_key(
    replicas: list[ServerProcess], shared_redis: RedisServer
) -> None:
    one, two = replicas
    assert chat(one, "sk-a").status_code == 200
    assert chat(two, "sk-a").status_code == 200
    # Admitted, then refused for its model: it still spends the key's budget.
    assert chat(one, "sk-a", model="nope").status_code == 404
    for server in replicas:
        refused = chat(server, "sk-a")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert int(refused.headers["Retry-After"]) >= 1
    assert chat(two, "sk-b").status_code == 200

    shared_redis.stop()
    statuses = [chat(server, key).status_code for server in replicas for key in KEYS[:2]]
    # Per-process budgets now: fresh local buckets admit, and nothing fails with a 5xx.
    assert all(status in (200, 429) for status in statuses), statuses
    assert 200 in statuses
    for server in replicas:
        assert "Redis unreachable" in server.log()
    # The cache falls back to memory too: a repeat on one replica is a hit there.
    for _ in range(2):
        cached = chat(one, "sk-cache", temperature=0, seed=6)
    assert cached.status_code == 200 and cached.headers["x-vlmserve-cache"] == "hit"
