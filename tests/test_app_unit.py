"""Unit tests of the HTTP layer with a scripted engine: loading, mid-stream and internal errors.

These are the paths a real tiny model cannot be made to take on demand; everything else is tested
against the real server in test_api.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator

from fastapi.testclient import TestClient

from vlmserve.api.app import create_app
from vlmserve.config import Settings
from vlmserve.engine.base import (
    ChoiceDelta,
    Engine,
    EngineOutput,
    EngineRequest,
    EngineStats,
    TokenLogprob,
)


class ScriptedEngine(Engine):
    """Loads when told to; streams two tokens, then fails the way it was told to."""

    name = "scripted"

    def __init__(self, failure: Exception | None = None) -> None:
        self.loaded = asyncio.Event()
        self.failure = failure

    @property
    def max_model_len(self) -> int:
        return 100

    async def start(self) -> None:
        await self.loaded.wait()

    async def shutdown(self) -> None:
        return None

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        logprobs = request.sampling.logprobs
        yield EngineOutput(3, [ChoiceDelta(0, "a", 1, logprobs=self.logprob("a", logprobs))])
        if self.failure:
            raise self.failure
        yield EngineOutput(3, [ChoiceDelta(0, "b", 1, "stop", self.logprob("b", logprobs))])

    @staticmethod
    def logprob(token: str, wanted: bool) -> list[TokenLogprob] | None:
        return [TokenLogprob(token, -0.5, [(token, -0.5), ("z", -2.0)])] if wanted else None

    async def abort(self, request_id: str) -> None:
        return None

    def stats(self) -> EngineStats:
        return EngineStats(0, 0)


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_health_and_chat_are_503_until_the_model_loads() -> None:
    engine = ScriptedEngine()
    with TestClient(create_app(Settings(), engine, "m")) as client:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["error"]["code"] == "loading"
        chat = client.post("/v1/chat/completions", json=BODY)
        assert chat.status_code == 503 and "Retry-After" in chat.headers
        client.portal.call(engine.loaded.set)  # type: ignore[union-attr]
        wait_ready(client)
        assert client.post("/v1/chat/completions", json=BODY).json()["choices"][0]["message"] == {
            "role": "assistant",
            "content": "ab",
        }


def wait_ready(client: TestClient) -> None:
    """Poll /health until the background load has finished."""
    for _ in range(100):
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError("the engine never became ready")


def loaded_client(engine: ScriptedEngine) -> TestClient:
    engine.loaded.set()
    return TestClient(create_app(Settings(), engine, "m"), raise_server_exceptions=False)


def test_error_mid_stream_is_an_openai_error_event_then_done() -> None:
    with loaded_client(ScriptedEngine(RuntimeError("secret detail"))) as client:
        wait_ready(client)
        response = client.post("/v1/chat/completions", json={**BODY, "stream": True})
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "secret detail" not in response.text
        assert json.loads(events[1])["choices"][0]["delta"]["content"] == "a"


def test_unexpected_failure_is_a_generic_500() -> None:
    with loaded_client(ScriptedEngine(RuntimeError("secret detail"))) as client:
        wait_ready(client)
        response = client.post("/v1/chat/completions", json=BODY)
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "internal_error"
        assert "secret detail" not in response.text


def test_logprobs_in_openai_shape_streaming_and_not() -> None:
    with loaded_client(ScriptedEngine()) as client:
        wait_ready(client)
        body = {**BODY, "logprobs": True, "top_logprobs": 2}
        whole = client.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]
        assert [e["token"] for e in whole["content"]] == ["a", "b"]
        assert whole["content"][0]["bytes"] == [97]
        assert whole["content"][0]["top_logprobs"][1] == {
            "token": "z",
            "logprob": -2.0,
            "bytes": [122],
        }
        stream = client.post("/v1/chat/completions", json={**body, "stream": True}).text
        chunks = [
            json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: {")
        ]
        streamed = [c["choices"][0]["logprobs"] for c in chunks[1:]]
        assert [e["content"][0]["token"] for e in streamed] == ["a", "b"]
        plain = client.post("/v1/chat/completions", json=BODY).json()["choices"][0]
        assert plain["logprobs"] is None
