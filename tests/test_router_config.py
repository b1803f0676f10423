"""The router's config file and ``auto``'s choice of tier, without servers."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from vlmserve.api.serving import sse
from vlmserve.config import Settings
from vlmserve.router import auto
from vlmserve.router.app import RouterState, _events
from vlmserve.router.backends import env_proxy, sse_events
from vlmserve.router.config import Price, RouterConfig

CONFIG = """
tiers: [cheap, capable, top]
backends:
  - model: gpt-4o-mini
    tier: top
    litellm_model: openai/gpt-4o-mini
    api_key: os.environ/TEST_ROUTER_KEY
    price: {per_1m_input_tokens: 0.15, per_1m_output_tokens: 0.6}
  - model: internvl2
    tier: capable
    api_base: http://internvl2:8000/v1
    price: {per_1k_images: 0.9}
  - model: llava-b
    tier: cheap
    api_base: http://llava-b:8000/v1
    price: {per_1k_images: 0.5}
  - model: llava
    tier: cheap
    api_base: http://llava-0:8000/v1
    replicas: [http://llava-1:8000/v1]
    price: {per_1k_images: 0.2}
auto:
  - {tier: capable, keywords: [chart, table, invoice]}
  - {tier: capable, response_format: true}
  - {tier: capable, min_images: 3}
  - {tier: capable, min_image_pixels: 1000000}
  - {tier: top, min_prompt_chars: 5000}
"""


@pytest.fixture()
def config(tmp_path: Path) -> RouterConfig:
    path = tmp_path / "router.yaml"
    path.write_text(CONFIG)
    return RouterConfig.load(path)


def png_url(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request(text: str, *images: str, **extra: object) -> dict:
    parts: list[dict] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return {"model": "auto", "messages": [{"role": "user", "content": parts}], **extra}


def test_fallbacks_stay_in_the_tier_by_price_then_climb(config: RouterConfig) -> None:
    llava = config.backend("llava")
    assert llava is not None and llava.api_bases == [
        "http://llava-0:8000/v1",
        "http://llava-1:8000/v1",
    ]
    assert config.fallbacks(llava) == ["llava-b", "internvl2", "gpt-4o-mini"]
    internvl2 = config.backend("internvl2")
    assert internvl2 is not None and config.fallbacks(internvl2) == ["gpt-4o-mini"]


def responses(prompt: str, *images: str, **extra: object) -> dict:
    parts: list[dict] = [{"type": "input_text", "text": prompt}]
    parts += [{"type": "input_image", "image_url": url} for url in images]
    return {"model": "auto", "input": [{"role": "user", "content": parts}], **extra}


@pytest.mark.parametrize(
    ("body", "model"),
    [
        (request("Caption this photo.", png_url(64, 64)), "llava"),
        (request("What does this CHART show?", png_url(64, 64)), "internvl2"),
        (
            request("Caption.", png_url(64, 64), response_format={"type": "json_object"}),
            "internvl2",
        ),
        (request("Caption.", png_url(64, 64), response_format={"type": "text"}), "llava"),
        (request("Compare.", *[png_url(8, 8)] * 3), "internvl2"),
        (request("Caption.", png_url(1200, 900)), "internvl2"),
        (request("x" * 6000, png_url(8, 8)), "gpt-4o-mini"),
        (request("A tablet on a desk.", png_url(8, 8)), "llava"),  # 'table' as a word only
        # Completions and the Responses API are read the same way.
        ({"model": "auto", "prompt": ["Sum the invoice:"]}, "internvl2"),
        ({"model": "auto", "prompt": "Hello"}, "llava"),
        (responses("Caption.", png_url(8, 8)), "llava"),
        (responses("Caption.", *[png_url(8, 8)] * 3), "internvl2"),
        (responses("Caption.", png_url(1200, 900)), "internvl2"),
        (
            responses("Caption.", png_url(8, 8), text={"format": {"type": "json_object"}}),
            "internvl2",
        ),
        ({"model": "auto", "input": "Read the table."}, "internvl2"),
    ],
)
def test_auto_picks_the_cheapest_tier_that_suits(
    config: RouterConfig, body: dict, model: str
) -> None:
    assert auto.choose(config, body).model == model


def test_api_keys_come_from_the_environment(
    config: RouterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosted = config.backend("gpt-4o-mini")
    assert hosted is not None
    monkeypatch.delenv("TEST_ROUTER_KEY", raising=False)
    with pytest.raises(ValueError, match="TEST_ROUTER_KEY"):
        hosted.resolved_api_key()
    monkeypatch.setenv("TEST_ROUTER_KEY", "sk-hosted")
    assert hosted.resolved_api_key() == "sk-hosted"


def test_config_mistakes_are_refused(tmp_path: Path) -> None:
    for text in (
        CONFIG.replace("tier: capable\n    api_base", "tier: gold\n    api_base"),
        CONFIG.replace("model: llava-b", "model: llava"),
        CONFIG.replace("model: llava-b", "model: auto"),
        CONFIG.replace("price: {per_1k_images: 0.9}", "price: {per_image: 0.9}"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ValidationError):
            RouterConfig.load(path)


def test_price_of_a_request() -> None:
    price = Price(per_1k_images=2.0, per_1m_input_tokens=1.0, per_1m_output_tokens=4.0)
    assert price.cost(images=2, prompt_tokens=1000, completion_tokens=500) == pytest.approx(
        0.004 + 0.001 + 0.002
    )


def encoded_url(image: Image.Image, compress_level: int) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=compress_level)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_cache_keys_name_images_by_content_and_skip_a_resent_data_url(
    config: RouterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same pixels in different bytes are one key; a data URL seen before is not decoded."""
    monkeypatch.setenv("TEST_ROUTER_KEY", "sk-test")
    state = RouterState(Settings(), config)
    loads = []
    real_load = state.images.load

    async def counted(refs):  # type: ignore[no-untyped-def]
        loads.append(len(refs))
        return await real_load(refs)

    monkeypatch.setattr(state.images, "load", counted)
    orange = Image.new("RGB", (64, 48), "orange")
    fast, small = encoded_url(orange, 1), encoded_url(orange, 9)
    assert fast != small

    def key(*urls: str) -> str | None:
        return asyncio.run(state.cache_key(request("Describe.", *urls, temperature=0)))

    first = key(fast)
    assert first is not None and key(small) == first and loads == [1, 1]
    assert key(fast) == first and key(small, fast) != first and loads == [1, 1]
    assert key(encoded_url(Image.new("RGB", (64, 48), "teal"), 1)) != first
    assert loads == [1, 1, 1]


async def _texts(*parts: str) -> AsyncIterator[str]:
    for part in parts:
        yield part


async def _collect(events: AsyncIterator[str]) -> list[str]:
    return [event async for event in events]


def test_relayed_streams_are_cut_into_events_up_to_done() -> None:
    """Events split across reads, several in one read, CRLF line ends; [DONE] ends the stream."""
    one, two = 'data: {"a":1}', 'data: {"b":2}'
    parts = [one[:7], one[7:] + "\r\n\r", "\n" + two + "\n", "\n: ping\n\ndata:[DONE]\n\n", "late"]
    events = asyncio.run(_collect(sse_events(_texts(*parts))))
    assert events == [one + "\n\n", two + "\n\n", ": ping\n\n"]


def test_relay_proxies_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "llava-0,localhost")
    assert env_proxy("https://api.openai.com/v1") == "http://proxy.internal:3128"
    assert env_proxy("http://llava-0:8000/v1") is None  # no HTTP_PROXY, and NO_PROXY names it
    assert env_proxy("https://localhost:8000/v1") is None


def test_relayed_events_name_the_router_backend(
    config: RouterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events already naming the backend pass unchanged; others are renamed; usage is read."""
    monkeypatch.setenv("TEST_ROUTER_KEY", "sk-test")
    state = RouterState(Settings(), config)
    backend = config.backend("llava")
    assert backend is not None
    ours = 'data: {"id":"x","model":"llava","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    theirs = 'data: {"id":"x","model":"llava-hf","choices":[]}\n\n'
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    last = sse({"id": "x", "model": "llava-hf", "choices": [], "usage": usage})
    spaced = 'data: {"id": "x", "model": "llava", "choices": []}\n\n'  # Python's json.dumps
    stream = _texts(ours, spaced, ": ping\n\n", theirs, last)
    out = asyncio.run(_collect(_events(state, stream, backend, 1)))
    assert out[0] is ours and out[1] is spaced  # not parsed and written again
    assert [json.loads(e[6:])["model"] for e in out[:4]] == ["llava"] * 4
    assert json.loads(out[3][6:])["usage"] == usage and out[4] == "data: [DONE]\n\n"
    labels = {"backend": "llava", "tier": "cheap", "kind": "completion"}
    assert state.registry.get_sample_value("vlmserve_router_tokens_total", labels) == 1
