"""``vlmserve route`` as a real process in front of two real tiny-model vlmserve backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import REPO, ServerProcess, free_port, image_data_url, start_server

pytestmark = pytest.mark.slow

CHEAP, CAPABLE = "tiny-llava", "tiny-internvl2"


def start_router(config: Path, log_path: Path, timeout: float = 240) -> ServerProcess:
    """``vlmserve route --config CONFIG`` on a free port, once ``/health`` answers."""
    port = free_port()
    args = [sys.executable, "-m", "vlmserve.cli.main", "route", "--config", str(config)]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = log_path.open("wb")
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"router exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return ServerProcess(process, port, "auto", log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise TimeoutError(f"router not ready in {timeout}s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def stack(
    tiny_model, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """Two backends (cheap LLaVA, capable InternVL-2) and the router in front of them."""
    logs = tmp_path_factory.mktemp("router")
    servers: dict[str, ServerProcess] = {}
    try:
        for name, family in ((CHEAP, "llava"), (CAPABLE, "internvl2")):
            args = ["--model", str(tiny_model(family)), "--served-model-name", name]
            servers[name] = start_server(args, logs / f"{name}.log")
        config = {
            "tiers": ["cheap", "capable"],
            "backends": [
                {
                    "model": CHEAP,
                    "tier": "cheap",
                    "api_base": servers[CHEAP].base_url,
                    "price": {"per_1k_images": 0.25},
                },
                {
                    "model": CAPABLE,
                    "tier": "capable",
                    "api_base": servers[CAPABLE].base_url,
                    "price": {"per_1k_images": 1.5},
                },
            ],
            "auto": [
                {"tier": "capable", "keywords": ["chart", "table", "invoice"]},
                {"tier": "capable", "response_format": True},
            ],
        }
        path = logs / "router.yaml"
        path.write_text(json.dumps(config))  # YAML is a superset of JSON
        servers["router"] = start_router(path, logs / "router.log")
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def messages(text: str, size: int = 32) -> list[dict]:
    image = {"type": "image_url", "image_url": {"url": image_data_url(size, size)}}
    return [{"role": "user", "content": [{"type": "text", "text": text}, image]}]


def served_by(server: ServerProcess) -> float:
    return server.metric("vlmserve_images_total")


def test_a_named_model_reaches_its_backend(stack: dict[str, ServerProcess]) -> None:
    api = client(stack["router"])
    for name in (CHEAP, CAPABLE):
        before = served_by(stack[name])
        raw = api.chat.completions.with_raw_response.create(
            model=name, messages=messages("Describe."), max_tokens=3
        )
        assert raw.parse().model == name
        assert raw.headers["x-vlmserve-backend"] == name
        assert served_by(stack[name]) == before + 1
    models = {m.id for m in api.models.list()}
    assert models == {"auto", CHEAP, CAPABLE}


def test_auto_sends_captions_cheap_and_charts_capable(stack: dict[str, ServerProcess]) -> None:
    api = client(stack["router"])
    caption = api.chat.completions.with_raw_response.create(
        model="auto", messages=messages("Caption this photo."), max_tokens=3
    )
    assert caption.parse().model == CHEAP and caption.headers["x-vlmserve-tier"] == "cheap"
    # The capable tier gets the chart question, JSON mode included (the backends constrain it).
    chart = api.chat.completions.with_raw_response.create(
        model="auto",
        messages=messages("What trend does this chart show? Answer in JSON."),
        max_tokens=3,
        response_format={"type": "json_object"},
    )
    assert chart.headers["x-vlmserve-backend"] == CAPABLE
    assert chart.parse().model == CAPABLE
    table = api.chat.completions.with_raw_response.create(
        model="auto", messages=messages("Read the table in this picture."), max_tokens=3
    )
    assert table.parse().model == CAPABLE and table.headers["x-vlmserve-tier"] == "capable"


def test_streams_pass_through_with_usage_when_asked(stack: dict[str, ServerProcess]) -> None:
    chunks = list(
        client(stack["router"]).chat.completions.create(
            model=CHEAP,
            messages=messages("Describe."),
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},  # vlmserve's own field travels untouched
        )
    )
    assert {c.model for c in chunks} == {CHEAP}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_completions_and_responses_are_routed(stack: dict[str, ServerProcess]) -> None:
    api = client(stack["router"])
    text = api.completions.with_raw_response.create(model=CHEAP, prompt="Say", max_tokens=3)
    assert text.parse().model == CHEAP and text.headers["x-vlmserve-backend"] == CHEAP
    assert text.parse().usage is not None and text.parse().usage.completion_tokens >= 1
    streamed = list(api.completions.create(model=CHEAP, prompt=["Say"], max_tokens=3, stream=True))
    assert streamed and all(c.object == "text_completion" for c in streamed)
    # auto reads the Responses API's input items: a table goes to the capable tier.
    image = {"type": "input_image", "image_url": image_data_url(32, 32)}
    content = [{"type": "input_text", "text": "Read the table."}, image]
    asked = [{"role": "user", "content": content}]
    before = served_by(stack[CAPABLE])
    answer = api.responses.with_raw_response.create(
        model="auto",
        input=asked,
        max_output_tokens=3,  # type: ignore[arg-type]
    )
    assert answer.headers["x-vlmserve-backend"] == CAPABLE
    assert answer.parse().model == CAPABLE and answer.parse().status in ("completed", "incomplete")
    assert served_by(stack[CAPABLE]) == before + 1
    events = [
        e.type
        for e in api.responses.create(model=CHEAP, input="Hi", max_output_tokens=3, stream=True)
    ]
    assert events[0] == "response.created" and events[-1] in (
        "response.completed",
        "response.incomplete",
    )


def test_errors_keep_openais_shape(stack: dict[str, ServerProcess]) -> None:
    api = client(stack["router"])
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="nope", messages=messages("Hi."))
    assert missing.value.response.json()["error"]["param"] == "model"
    # A backend's own 400 comes back as it said it (the image is not an image).
    bad = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
        }
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(model=CHEAP, messages=bad)  # type: ignore[arg-type]
    error = refused.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "LiteLLM" not in error["message"]


def test_health_and_metrics_show_backends_and_cost_per_tier(
    stack: dict[str, ServerProcess],
) -> None:
    client(stack["router"]).chat.completions.create(
        model=CHEAP, messages=messages("Describe."), max_tokens=2
    )
    health = httpx.get(f"{stack['router'].url}/health").json()
    assert [b["model"] for b in health["backends"]] == [CHEAP, CAPABLE]
    assert all(b["state"] == "ok" for b in health["backends"])
    cheap = health["tiers"]["cheap"]
    assert cheap["images"] >= 1 and cheap["cost_per_1k_images_usd"] == pytest.approx(0.25)
    text = httpx.get(f"{stack['router'].url}/metrics").text
    assert f'vlmserve_router_images_total{{backend="{CHEAP}",tier="cheap"}}' in text
    assert "vlmserve_router_cost_dollars_total" in text


def test_the_router_caches_repeats(stack: dict[str, ServerProcess]) -> None:
    api = client(stack["router"])
    ask = {"model": CAPABLE, "messages": messages("Describe the picture."), "max_tokens": 3}
    first = api.chat.completions.with_raw_response.create(**ask, temperature=0)  # type: ignore[call-overload]
    again = api.chat.completions.with_raw_response.create(**ask, temperature=0)  # type: ignore[call-overload]
    assert (
        first.headers["x-vlmserve-cache"] == "miss" and again.headers["x-vlmserve-cache"] == "hit"
    )
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert again.parse().model == CAPABLE


def test_litellms_own_call_path_answers_the_same(
    stack: dict[str, ServerProcess], tmp_path: Path
) -> None:
    """Least-busy routing needs LiteLLM to see each call, so it takes LiteLLM's whole path
    (``acompletion``) instead of the relay: same answers, same shapes."""
    config = json.loads((Path(stack["router"].log_path).parent / "router.yaml").read_text())
    path = tmp_path / "least-busy.yaml"
    path.write_text(json.dumps({**config, "routing_strategy": "least-busy"}))
    router = start_router(path, tmp_path / "least-busy.log")
    try:
        api = client(router)
        whole = api.chat.completions.with_raw_response.create(
            model="auto", messages=messages("Read this table."), max_tokens=3
        )
        assert whole.parse().model == CAPABLE and whole.headers["x-vlmserve-tier"] == "capable"
        chunks = list(
            api.chat.completions.create(
                model=CHEAP,
                messages=messages("Describe."),
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
        )
        assert {c.model for c in chunks} == {CHEAP}
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        with pytest.raises(openai.NotFoundError):
            api.chat.completions.create(model="nope", messages=messages("Hi."))
    finally:
        router.stop()


def test_killing_a_backend_mid_load_loses_no_request(stack: dict[str, ServerProcess]) -> None:
    """Runs last: it kills the cheap backend; its requests fall back to the capable one."""
    api = client(stack["router"])

    def one(i: int) -> str:
        reply = api.chat.completions.create(
            model=CHEAP,
            messages=messages(f"Describe picture {i}."),
            max_tokens=24,
            extra_body={"ignore_eos": True},
            timeout=120,
        )
        assert reply.choices[0].message.content is not None
        return reply.model

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(24)]
        # Kill once the cheap backend has some requests in hand (some answered, some not).
        deadline = time.monotonic() + 60
        while served_by(stack[CHEAP]) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        stack[CHEAP].process.send_signal(signal.SIGKILL)
        models = [f.result() for f in futures]  # raises if any request failed
    assert set(models) <= {CHEAP, CAPABLE} and CAPABLE in models
    health = httpx.get(f"{stack['router'].url}/health").json()
    assert health["backends"][0]["state"] == "cooling_down"
    # With no live fallback left for the capable tier's failures, a 503 with Retry-After:
    stack[CAPABLE].process.send_signal(signal.SIGKILL)
    with pytest.raises(openai.APIStatusError) as gone:
        api.chat.completions.create(model=CAPABLE, messages=messages("Hi."), max_tokens=2)
    assert gone.value.status_code == 503 and int(gone.value.response.headers["retry-after"]) >= 1
