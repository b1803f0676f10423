"""Access, limits, image URLs, timeouts and logs on real servers, through the openai SDK and httpx.

The ``hardened`` server has API keys, rate limits, a queue of two, short timeouts, a file://
folder and debug JSON logs. It may fetch image URLs from private addresses, so that it can reach
the loopback image server: only ever give it loopback URLs. The default demo server shows that
private and link-local URLs are refused (by literal addresses, refused before any connection).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import ServerProcess, image_data_url, start_server
from tests.image_server import ImageServer, image_server, png_bytes

KEYS = ["sk-main", "sk-rpm", "sk-tpm", "sk-queue", "sk-slow", "sk-time", "sk-time2", "sk-logs"]
KEYS += ["sk-img"]
FILE_KEY = "sk-from-file-7f3a"
REQUESTS_PER_MINUTE = 4
TOKENS_PER_MINUTE = 1500
FETCH_TIMEOUT = 3
REQUEST_TIMEOUT = 5


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with image_server() as server:
        yield server


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    (root / "cat.png").write_bytes(png_bytes(100, 80))
    (root.parent / "outside.png").write_bytes(png_bytes())
    return root


@pytest.fixture(scope="module")
def hardened(
    tiny_model, media_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("hardened")
    (logs / "keys").write_text(f"# from a file\n{FILE_KEY}\n")
    settings = {
        "API_KEYS": ",".join(KEYS),
        "API_KEYS_FILE": str(logs / "keys"),
        "PROTECT_METRICS": "true",
        "RATE_LIMIT_REQUESTS_PER_MINUTE": str(REQUESTS_PER_MINUTE),
        "RATE_LIMIT_TOKENS_PER_MINUTE": str(TOKENS_PER_MINUTE),
        "MAX_QUEUED_REQUESTS": "2",
        "REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
        "MEDIA_FETCH_TIMEOUT_SECONDS": str(FETCH_TIMEOUT),
        "ALLOW_PRIVATE_MEDIA_URLS": "true",
        "ALLOWED_LOCAL_MEDIA_PATH": str(media_root),
        "MAX_IMAGE_TOKENS_PER_REQUEST": "1200",
        "LOG_LEVEL": "debug",
        "JSON_LOGS": "true",
    }
    env = {f"VLMSERVE_{k}": v for k, v in settings.items()}
    server = start_server(["--model", str(tiny_model("llava"))], logs / "server.log", env=env)
    yield server
    server.stop()


def api(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


def ask(
    server: ServerProcess, key: str, *images: str, max_tokens: int = 1, **extra: object
) -> openai.types.chat.ChatCompletion:
    parts: list[dict] = [{"type": "text", "text": "Describe."}]
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return api(server, key).chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": parts}],
        max_tokens=max_tokens,
        **extra,  # type: ignore[arg-type]
    )


def error_of(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def running(server: ServerProcess, key: str = "sk-main") -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    line = next(x for x in text.splitlines() if x.startswith("vlmserve_requests_running "))
    return float(line.split()[1])


# -- access ---------------------------------------------------------------------------------------


def test_api_keys_are_required(hardened: ServerProcess) -> None:
    for key in ("sk-wrong", "sk-mai", "sk-main2"):
        with pytest.raises(openai.AuthenticationError) as err:
            ask(hardened, key)
        assert error_of(err.value)["code"] == "invalid_api_key"
    for headers in ({}, {"Authorization": "Basic c2stbWFpbg=="}, {"Authorization": "Bearer"}):
        missing = httpx.post(f"{hardened.base_url}/chat/completions", headers=headers, json={})
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        api(hardened, "sk-wrong").models.list()
    assert ask(hardened, FILE_KEY).choices[0].finish_reason in ("stop", "length")
    assert [m.id for m in api(hardened, "sk-main").models.list().data] == [hardened.model]


def test_health_is_open_and_metrics_are_protected(hardened: ServerProcess) -> None:
    assert httpx.get(f"{hardened.url}/health").status_code == 200
    refused = httpx.get(f"{hardened.url}/metrics")
    assert refused.status_code == 401 and set(refused.json()) == {"error"}
    assert running(hardened) == 0


def test_requests_per_minute_per_key(hardened: ServerProcess) -> None:
    for _ in range(REQUESTS_PER_MINUTE):
        ask(hardened, "sk-rpm")
    with pytest.raises(openai.RateLimitError) as err:
        ask(hardened, "sk-rpm")
    assert error_of(err.value)["type"] == "rate_limit_error"
    assert int(err.value.response.headers["retry-after"]) >= 1
    ask(hardened, "sk-main")  # other keys keep their own budget


def test_tokens_per_minute_per_key(hardened: ServerProcess) -> None:
    small = image_data_url(64, 64)
    first = ask(
        hardened, "sk-tpm", small, small, max_tokens=60, n=8, extra_body={"ignore_eos": True}
    )
    assert first.usage.total_tokens > TOKENS_PER_MINUTE
    with pytest.raises(openai.RateLimitError) as err:
        ask(hardened, "sk-tpm")
    assert int(err.value.response.headers["retry-after"]) >= 1


# -- overload -------------------------------------------------------------------------------------


def test_beyond_the_queue_is_503_until_a_slot_frees(
    hardened: ServerProcess, images: ImageServer
) -> None:
    """Two requests held on a stalled image URL fill the queue of two; a third gets a 503."""
    stall = images.url("/stall")
    images.seen.release.clear()
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(ask, hardened, "sk-queue", stall) for _ in range(2)]
        for _ in range(2):
            assert images.seen.stalled.acquire(timeout=30)
        with pytest.raises(openai.InternalServerError) as err:
            ask(hardened, "sk-queue")
        assert err.value.status_code == 503
        assert error_of(err.value)["code"] == "server_overloaded"
        assert err.value.response.headers["retry-after"] == "1"
        images.seen.release.set()
        assert [f.result().choices[0].finish_reason is not None for f in held] == [True, True]
    ask(hardened, "sk-queue")


def test_a_stalled_image_url_times_out_and_others_go_on(
    hardened: ServerProcess, images: ImageServer
) -> None:
    images.seen.release.clear()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(ask, hardened, "sk-slow", images.url("/stall"))
        assert images.seen.stalled.acquire(timeout=30)
        # While the fetch hangs, the server answers others.
        assert httpx.get(f"{hardened.url}/health").status_code == 200
        assert ask(hardened, "sk-main", image_data_url(32, 32)).usage.prompt_tokens > 576
        with pytest.raises(openai.BadRequestError) as err:
            slow.result()
    images.seen.release.set()
    error = error_of(err.value)
    assert error["code"] == "image_fetch_timeout"
    assert error["param"] == "messages[0].content[1].image_url"


def test_request_timeout_is_504_and_aborts_the_engine(hardened: ServerProcess) -> None:
    long = {"max_tokens": 6000, "extra_body": {"ignore_eos": True}}
    with pytest.raises(openai.APIStatusError) as err:
        ask(hardened, "sk-time", **long)
    assert err.value.status_code == 504 and error_of(err.value)["type"] == "timeout_error"
    # The first request used more than a minute's tokens: the stream uses another key.
    stream = ask(hardened, "sk-time2", stream=True, **long)
    with pytest.raises(openai.APIError) as streamed:
        list(stream)
    assert "longer than this server allows" in str(streamed.value)
    assert wait_until_idle(hardened) == 0


def wait_until_idle(server: ServerProcess) -> float:
    for _ in range(150):
        if running(server) == 0:
            return 0
        threading.Event().wait(0.1)
    return running(server)


# -- images -------------------------------------------------------------------------------------


def test_http_and_file_image_urls(
    hardened: ServerProcess, images: ImageServer, media_root: Path
) -> None:
    by_url = ask(hardened, "sk-img", images.url("/image.png?w=300&h=200"))
    by_file = ask(hardened, "sk-img", f"file://{media_root}/cat.png")
    assert by_url.usage.prompt_tokens == by_file.usage.prompt_tokens > 576
    with pytest.raises(openai.BadRequestError) as err:
        ask(hardened, "sk-img", f"file://{media_root}/../outside.png")
    assert error_of(err.value)["param"] == "messages[0].content[1].image_url"


def test_image_token_cap_per_request(hardened: ServerProcess) -> None:
    small = image_data_url(32, 32)
    with pytest.raises(openai.BadRequestError) as err:
        ask(hardened, "sk-main", small, small, small)
    error = error_of(err.value)
    assert error["code"] == "too_many_image_tokens"
    assert error["param"] == "messages[0].content[3].image_url"


def test_images_per_request_are_capped(demo_server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(demo_server, "unused", *[image_data_url(8, 8)] * 9)
    assert error_of(err.value)["code"] == "too_many_images"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://10.0.0.1/cat.png",
        "http://[::ffff:127.0.0.1]:9/cat.png",
        "http://0.0.0.0:9/cat.png",
        "file:///etc/passwd",
        "ftp://127.0.0.1/cat.png",
    ],
)
def test_private_image_urls_are_refused_by_default(demo_server: ServerProcess, url: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(demo_server, "unused", image_data_url(8, 8), url)
    error = error_of(err.value)
    assert error["param"] == "messages[0].content[2].image_url"
    assert error["message"]


def test_loopback_image_server_is_refused_by_default(
    demo_server: ServerProcess, images: ImageServer
) -> None:
    images.seen.requests.clear()
    with pytest.raises(openai.BadRequestError) as err:
        ask(demo_server, "unused", images.url("/image.png"))
    assert error_of(err.value)["code"] == "image_url_not_allowed"
    assert images.seen.requests == []


# -- logs (last: it reads everything the server logged) -------------------------------------------


def test_logs_carry_request_ids_and_no_secrets(hardened: ServerProcess) -> None:
    image = image_data_url(50, 40)
    payload = image.split(",", 1)[1]
    response = httpx.post(
        f"{hardened.base_url}/chat/completions",
        headers={"Authorization": "Bearer sk-logs", "X-Request-Id": "trace-4242"},
        json={
            "model": hardened.model,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}]}
            ],
            "max_tokens": 3,
        },
        timeout=60,
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-4242"
    bad = httpx.post(f"{hardened.base_url}/chat/completions", json={"model": 1})
    assert bad.status_code == 401 and len(bad.headers["x-request-id"]) == 32
    lines = [json.loads(line) for line in hardened.log().splitlines() if line.startswith("{")]
    assert len(lines) == len(hardened.log().splitlines())  # JSON logs: every line is JSON
    ours = [entry for entry in lines if entry["request_id"] == "trace-4242"]
    loggers = {entry["logger"] for entry in ours}
    assert "vlmserve.engine.transformers_engine" in loggers  # the worker thread names it too
    assert any("/v1/chat/completions" in entry["message"] for entry in ours)  # access line
    text = hardened.log()
    assert payload[:40] not in text and payload[-40:] not in text
    assert base64.b64decode(payload)[1:4] == b"PNG"
    for secret in [*KEYS, FILE_KEY, "sk-wrong"]:
        assert secret not in text
