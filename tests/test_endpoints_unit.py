"""Every generation endpoint shares chat's guards: readiness, rate limits, errors mid-stream.

A scripted engine (from test_app_unit) takes the paths a real tiny model cannot be made to take on
demand; the real server runs every endpoint in test_openai_clients.py.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.test_app_unit import ScriptedEngine, loaded_client, wait_ready
from vlmserve.api.app import create_app
from vlmserve.config import Settings

BODIES = {
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "m", "prompt": "hi"},
    "/v1/responses": {"model": "m", "input": "hi"},
}


@pytest.mark.parametrize("path", BODIES)
def test_every_endpoint_is_503_until_the_model_loads(path: str) -> None:
    with TestClient(create_app(Settings(), ScriptedEngine(), "m")) as client:
        answer = client.post(path, json=BODIES[path])
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "loading"


@pytest.mark.parametrize("path", BODIES)
def test_every_endpoint_counts_against_the_rate_limit(path: str) -> None:
    engine = ScriptedEngine()
    engine.loaded.set()
    settings = Settings(rate_limit_requests_per_minute=1)
    with TestClient(create_app(settings, engine, "m")) as client:
        wait_ready(client)
        assert client.post(path, json=BODIES[path]).status_code == 200
        refused = client.post(path, json=BODIES[path])
        assert refused.status_code == 429 and "Retry-After" in refused.headers
        metrics = client.get("/metrics").text
        assert f'vlmserve_requests_total{{endpoint="{path}",status="429"}} 1.0' in metrics


def test_completions_error_mid_stream_is_an_event_then_done() -> None:
    with loaded_client(ScriptedEngine(RuntimeError("secret detail"))) as client:
        wait_ready(client)
        response = client.post(
            "/v1/completions", json={**BODIES["/v1/completions"], "stream": True}
        )
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[0])["choices"][0]["text"] == "a"
        assert set(json.loads(events[-2])["error"]) == {"message", "type", "param", "code"}
        assert events[-1] == "[DONE]" and "secret detail" not in response.text


def test_responses_error_mid_stream_is_an_error_event() -> None:
    with loaded_client(ScriptedEngine(RuntimeError("secret detail"))) as client:
        wait_ready(client)
        response = client.post("/v1/responses", json={**BODIES["/v1/responses"], "stream": True})
        kinds = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert "response.output_text.delta" in kinds and kinds[-1] == "error"
        assert "secret detail" not in response.text


def test_responses_whole_answer_has_the_sdk_shape() -> None:
    with loaded_client(ScriptedEngine()) as client:
        wait_ready(client)
        body = client.post("/v1/responses", json=BODIES["/v1/responses"]).json()
        assert body["object"] == "response" and body["status"] == "completed"
        (message,) = body["output"]
        assert message["content"] == [{"type": "output_text", "text": "ab", "annotations": []}]
        assert body["usage"]["input_tokens"] == 3 and body["usage"]["output_tokens"] == 2
