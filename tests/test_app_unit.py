"""Unit tests of the HTTP layer with a scripted engine: loading, mid-stream and internal errors.

These are the paths a real tiny model cannot be made to take on demand; everything else is tested
against the real server in test_api.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator

import pytest
from fastapi.testclient import TestClient

from vlmserve.api.app import create_app
from vlmserve.api.json_body import parse_json
from vlmserve.api.metrics import Metrics
from vlmserve.config import Settings
from vlmserve.engine.base import (
    ChoiceDelta,
    Engine,
    EngineOutput,
    EngineRequest,
    EngineStats,
    PreparedRequest,
    RequestLimits,
    SamplingDefaults,
    StepSizes,
    TokenLogprob,
)
from vlmserve.engine.errors import EngineStopping, RequestRejected
from vlmserve.engine.prepare import Rendered, finish


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

    async def prepare(self, request: EngineRequest) -> PreparedRequest:
        # A three-token prompt without images; the shared checks and resolution run as they do
        # on the real engines.
        return finish(request, Rendered(3, [], None), self.max_model_len, self.limits, DEFAULTS)

    async def generate(self, request: PreparedRequest) -> AsyncGenerator[EngineOutput, None]:
        self.last = request
        logprobs = request.sampling.options.logprobs
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


DEFAULTS = SamplingDefaults(temperature=0.3, top_k=7)
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


def test_engine_errors_get_their_openai_status_and_shape() -> None:
    rejected = RequestRejected("no such knob here", param="top_k", code="unsupported")
    with loaded_client(ScriptedEngine(rejected)) as client:
        wait_ready(client)
        response = client.post("/v1/chat/completions", json=BODY)
        assert response.status_code == 400
        assert response.json()["error"] == {
            "message": "no such knob here",
            "type": "invalid_request_error",
            "param": "top_k",
            "code": "unsupported",
        }
    with loaded_client(ScriptedEngine(EngineStopping("going away"))) as client:
        wait_ready(client)
        events = client.post("/v1/chat/completions", json={**BODY, "stream": True}).text
        assert '"type":"overloaded_error"' in events and events.endswith("data: [DONE]\n\n")


def test_unset_knobs_fall_back_and_max_tokens_is_capped_by_the_context() -> None:
    engine = ScriptedEngine()
    settings = Settings(default_max_tokens=500)
    engine.limits = RequestLimits.from_settings(settings)
    engine.loaded.set()
    with TestClient(create_app(settings, engine, "m")) as client:
        wait_ready(client)
        assert client.post("/v1/chat/completions", json=BODY).status_code == 200
        # A 100-token context and a 3-token prompt leave 97, below the default of 500.
        assert engine.last.sampling.max_tokens == 97
        assert (engine.last.sampling.temperature, engine.last.sampling.top_k) == (0.3, 7)
        assert engine.last.sampling.top_p == 1.0
        body = {**BODY, "max_tokens": 97, "temperature": 0, "top_k": -1}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        assert (engine.last.sampling.temperature, engine.last.sampling.top_k) == (0, -1)
        too_long = client.post("/v1/chat/completions", json={**BODY, "max_tokens": 98})
        assert too_long.status_code == 400
        assert too_long.json()["error"]["code"] == "context_length_exceeded"
        assert too_long.json()["error"]["param"] == "messages"


def test_step_sizes_render_as_a_cumulative_histogram() -> None:
    """Each engine step's batch size lands in a power-of-two bucket; idle steps are not counted."""
    sizes = StepSizes()
    for requests in (0, 1, 3, 8, 600):
        sizes.observe(requests)
    text = Metrics(lambda: EngineStats(1, 0, step_sizes=sizes)).render().decode()
    buckets = {
        line.split('le="')[1].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("vlmserve_engine_step_requests_bucket")
    }
    assert (buckets["1.0"], buckets["2.0"], buckets["4.0"], buckets["8.0"]) == (1, 1, 2, 3)
    assert (buckets["512.0"], buckets["+Inf"]) == (3, 4)
    assert "vlmserve_engine_step_requests_count 4.0" in text
    assert "vlmserve_engine_step_requests_sum 612.0" in text


def test_bodies_parse_as_the_standard_library_parses_them() -> None:
    """The fast JSON parser gives json.loads's value, and json.loads's error for bad bodies."""
    bodies = [
        b'{"a": 1, "a": 2, "big": 100000000000000000000000000, "f": [0.1, 1e400, NaN]}',
        '{"text": "caf\u00e9 \U0001f600"}'.encode(),
        '{"utf16": true}'.encode("utf-16"),  # json.loads detects UTF-16; pydantic-core does not
        b'{"lone": "\\ud800"}',  # a lone surrogate: json.loads keeps it, pydantic-core refuses
    ]
    for body in bodies:
        want = json.loads(body)
        assert json.dumps(parse_json(body)) == json.dumps(want)
    for bad in (b"{not json", b"", b'{"a": 1} trailing'):
        with pytest.raises(json.JSONDecodeError):
            parse_json(bad)
