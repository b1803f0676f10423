"""The request seam through the real server and the real openai SDK (transformers engine).

A tiny LLaVA whose ``generation_config.json`` asks for greedy decoding, served with a default
``max_tokens`` larger than its context and a two-image limit: unset sampling knobs come from the
checkpoint, a request without ``max_tokens`` gets what the context leaves, an explicit one that
does not fit is OpenAI's 400, and the engine's image limit is a 400 too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.helpers import ServerProcess, image_data_url, start_server

pytestmark = pytest.mark.slow

WORD = " cat"


@pytest.fixture(scope="module")
def greedy_llava(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """A copy of the tiny LLaVA whose generation config asks for greedy decoding."""
    folder = tmp_path_factory.mktemp("greedy") / "llava-greedy"
    shutil.copytree(tiny_model("llava"), folder)
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.0}))
    return folder


@pytest.fixture(scope="module")
def seam_server(greedy_llava: Path) -> Iterator[ServerProcess]:
    env = {"VLMSERVE_DEFAULT_MAX_TOKENS": "100000", "VLMSERVE_MAX_IMAGES_PER_REQUEST": "2"}
    server = start_server(
        ["--model", str(greedy_llava), "--engine", "transformers"],
        greedy_llava.parent / "server.log",
        env=env,
    )
    yield server
    server.stop()


def api(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def ask(server: ServerProcess, text: str, **kwargs) -> openai.types.chat.ChatCompletion:  # type: ignore[no-untyped-def]
    return api(server).chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": text}],
        extra_body={"ignore_eos": True},
        # The engine must answer every time, not the response cache (repeats are deterministic).
        extra_headers={"Cache-Control": "no-cache"},
        **kwargs,
    )


def context_length(folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text())
    return int(config["text_config"]["max_position_embeddings"])


def test_checkpoint_temperature_is_the_default(seam_server: ServerProcess) -> None:
    """Greedy from generation_config.json: the same text every time; an explicit temperature
    still samples (so the sameness is the checkpoint's doing, not the random weights')."""
    greedy = {ask(seam_server, "hello", max_tokens=12).choices[0].message.content for _ in range(3)}
    assert len(greedy) == 1
    sampled = {
        ask(seam_server, "hello", max_tokens=12, temperature=1.0, seed=s).choices[0].message.content
        for s in range(3)
    }
    assert len(sampled) > 1


def test_max_tokens_default_is_capped_by_the_context(
    seam_server: ServerProcess, greedy_llava: Path
) -> None:
    limit = context_length(greedy_llava)
    one = ask(seam_server, WORD * 100, max_tokens=1).usage.prompt_tokens
    two = ask(seam_server, WORD * 200, max_tokens=1).usage.prompt_tokens
    per_word = (two - one) / 100
    words = 100 + int((limit - 10 - one) / per_word)
    text = WORD * words
    reply = ask(seam_server, text)
    room = limit - reply.usage.prompt_tokens
    assert 0 < room < 100_000
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == room
    with pytest.raises(openai.BadRequestError) as err:
        ask(seam_server, text, max_tokens=room + 1)
    error = err.value.response.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert f"maximum context length is {limit} tokens" in error["message"]


def test_the_engine_image_limit_is_a_400(seam_server: ServerProcess) -> None:
    image = {"type": "image_url", "image_url": {"url": image_data_url(32, 32)}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, image, image]}]
    reply = api(seam_server).chat.completions.create(
        model=seam_server.model, messages=messages, max_tokens=1
    )
    assert reply.usage.prompt_tokens > 2 * 576
    messages[0]["content"].append(image)
    with pytest.raises(openai.BadRequestError) as err:
        api(seam_server).chat.completions.create(
            model=seam_server.model, messages=messages, max_tokens=1
        )
    error = err.value.response.json()["error"]
    assert (error["code"], error["param"]) == ("too_many_images", "messages")
    assert "at most 2 images" in error["message"]
