"""SIGTERM drains: readiness goes 503, new requests get 503, requests in flight finish, exit 0.

The requests in flight are held on a stalled loopback image URL, so they are certainly in flight
when the signal arrives and finish only when the test lets them: no timing is involved.
"""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from safetensors import safe_open

from tests.conftest import server_args
from tests.helpers import ServerProcess, resaved_by_transformers, start_server
from tests.image_server import image_server


def chat(server: ServerProcess, url: str | None, stream: bool = False) -> tuple[str, int]:
    """(finish reason, completion tokens) of one request, streamed or not."""
    parts: list[dict] = [{"type": "text", "text": "Describe."}]
    if url:
        parts.append({"type": "image_url", "image_url": {"url": url}})
    api = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    reply = api.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": parts}],
        max_tokens=8,
        stream=stream,
        extra_body={"ignore_eos": True},
        **({"stream_options": {"include_usage": True}} if stream else {}),  # type: ignore[arg-type]
    )
    if not stream:
        return str(reply.choices[0].finish_reason), reply.usage.completion_tokens  # type: ignore[union-attr]
    chunks = list(reply)  # type: ignore[arg-type]
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    return str(reasons[-1]), chunks[-1].usage.completion_tokens


@pytest.mark.parametrize("engine", ["transformers", pytest.param("vllm", marks=pytest.mark.slow)])
def test_sigterm_drains_requests_in_flight_then_exits_0(
    engine: str, tiny_model, tmp_path: Path
) -> None:
    """On vLLM the model is a LLaVA saved by transformers 5 (flat CLIP weight names), so this
    server also shows that vlmserve's vLLM plugin loads such folders."""
    env = {
        "VLMSERVE_ALLOW_PRIVATE_MEDIA_URLS": "true",
        "VLMSERVE_MEDIA_FETCH_TIMEOUT_SECONDS": "120",
        "VLMSERVE_SHUTDOWN_GRACE_SECONDS": "120",
    }
    model = tiny_model("llava")
    if engine == "vllm":
        model = resaved_by_transformers(model, tmp_path / "llava-saved-by-transformers")
        names = safe_open(model / "model.safetensors", "pt").keys()
        assert "vision_tower.embeddings.patch_embedding.weight" in names
    with image_server() as images:
        server = start_server(
            ["--model", str(model), *server_args(engine)],
            tmp_path / "log",
            env=env,
            timeout=900,
        )
        try:
            with ThreadPoolExecutor(2) as pool:
                plain = pool.submit(chat, server, images.url("/stall"))
                streamed = pool.submit(chat, server, images.url("/stall"), True)
                for _ in range(2):
                    assert images.seen.stalled.acquire(timeout=60)
                server.process.send_signal(signal.SIGTERM)
                assert wait_for_status(f"{server.url}/health", 503)
                assert httpx.get(f"{server.url}/health").json()["error"]["code"] == "shutting_down"
                with pytest.raises(openai.InternalServerError) as err:
                    chat(server, None)
                assert err.value.status_code == 503
                assert server.process.poll() is None  # still waiting for the two in flight
                images.seen.release.set()
                assert plain.result() == ("length", 8)
                assert streamed.result() == ("length", 8)
            assert server.process.wait(60) == 0
        finally:
            server.stop()
    assert "[-] SIGTERM: draining; 2 request(s) in flight" in server.log()


def wait_for_status(url: str, status: int) -> bool:
    """Poll ``url`` until it answers ``status`` (the signal is handled asynchronously)."""
    for _ in range(300):
        if httpx.get(url).status_code == status:
            return True
        threading.Event().wait(0.05)
    return False


def test_requests_past_the_grace_do_not_keep_the_process(tiny_model, tmp_path: Path) -> None:
    """A request that never finishes is cut when the grace runs out; the exit is still 0."""
    env = {
        "VLMSERVE_ALLOW_PRIVATE_MEDIA_URLS": "true",
        "VLMSERVE_MEDIA_FETCH_TIMEOUT_SECONDS": "300",
        "VLMSERVE_SHUTDOWN_GRACE_SECONDS": "1",
    }
    with image_server() as images:
        server = start_server(["--model", str(tiny_model("llava"))], tmp_path / "log", env=env)
        try:
            with ThreadPoolExecutor(1) as pool:
                stuck = pool.submit(chat, server, images.url("/stall"))
                assert images.seen.stalled.acquire(timeout=60)
                server.process.send_signal(signal.SIGTERM)
                assert server.process.wait(120) == 0
                with pytest.raises(openai.InternalServerError) as err:
                    stuck.result()
                assert err.value.status_code == 503
                assert err.value.response.json()["error"]["code"] == "shutting_down"
        finally:
            server.stop()
    assert "shutdown grace ran out with 1 request(s) in flight" in server.log()
