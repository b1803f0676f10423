"""The OpenAI API end to end: the real server, the real openai SDK, tiny checkpoints per family."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.helpers import REPO, ServerProcess, hf_cache_snapshot, image_data_url, start_server
from vlmserve.models.families import get_family

PROMPT = "What is in this image?"


def client(server: ServerProcess) -> openai.OpenAI:
    # These tests are of the engine path: repeated deterministic requests must not be answered by
    # the response cache (tests/test_response_cache.py tests that).
    headers = {"Cache-Control": "no-cache"}
    return openai.OpenAI(
        base_url=server.base_url, api_key="unused", max_retries=0, default_headers=headers
    )


def user_message(*images: str, text: str = PROMPT) -> list[dict]:
    parts: list[dict] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return [{"role": "user", "content": parts}]


def test_non_streaming_with_image(family_server: tuple[str, ServerProcess]) -> None:
    _, server = family_server
    reply = client(server).chat.completions.create(
        model=server.model,
        messages=user_message(image_data_url(640, 480)),
        max_tokens=12,
        extra_body={"ignore_eos": True},
    )
    assert reply.object == "chat.completion"
    assert len(reply.choices) == 1
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_streaming_with_image(family_server: tuple[str, ServerProcess]) -> None:
    _, server = family_server
    stream = client(server).chat.completions.create(
        model=server.model,
        messages=user_message(image_data_url(500, 300, "JPEG")),
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert content
    assert reasons == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert len({c.id for c in chunks}) == 1


def test_usage_counts_image_tokens(family_server: tuple[str, ServerProcess]) -> None:
    """prompt_tokens grows by exactly the family's image-token rule for each image.

    Templates add a separator of their own around each image (a newline, a BOS per chunk): the
    same small count for every image, whatever its size.
    """
    family, server = family_server
    rule = get_family(family)
    api = client(server)

    def prompt_tokens(*images: str) -> int:
        reply = api.chat.completions.create(
            model=server.model, messages=user_message(*images), max_tokens=1
        )
        return reply.usage.prompt_tokens

    text_only = prompt_tokens()
    one = prompt_tokens(image_data_url(1024, 768))
    two = prompt_tokens(image_data_url(1024, 768), image_data_url(300, 900))
    separator = one - text_only - rule.image_tokens(1024, 768)
    assert 0 <= separator <= 2
    assert two - one - rule.image_tokens(300, 900) == separator
    assert rule.image_tokens(1024, 768) != rule.image_tokens(300, 900) or family == "llava"


def test_two_images_in_one_message(family_server: tuple[str, ServerProcess]) -> None:
    _, server = family_server
    reply = client(server).chat.completions.create(
        model=server.model,
        max_tokens=4,
        messages=user_message(image_data_url(336, 336), image_data_url(448, 448, "JPEG")),
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 2 * 256


def test_demo_server_answers_sdk_with_image(demo_server: ServerProcess) -> None:
    """`vlmserve serve` with no flags serves the demo model and says its answers are random."""
    reply = client(demo_server).chat.completions.create(
        model=demo_server.model, messages=user_message(image_data_url(800, 600)), max_tokens=8
    )
    assert reply.choices[0].message.content is not None
    assert reply.usage.prompt_tokens > 576
    assert "random" in demo_server.log()
    models = client(demo_server).models.list()
    assert [m.id for m in models.data] == [demo_server.model]


# -- sampling knobs ------------------------------------------------------------------------------


def test_seed_makes_output_reproducible(family_server: tuple[str, ServerProcess]) -> None:
    _, server = family_server
    api = client(server)

    def answer(seed: int) -> str:
        return (
            api.chat.completions.create(
                model=server.model,
                messages=user_message(),
                max_tokens=16,
                seed=seed,
                temperature=1.0,
                extra_body={"ignore_eos": True},
            )
            .choices[0]
            .message.content
        )

    assert answer(7) == answer(7)
    assert answer(7) != answer(8)


def test_n_choices_and_greedy(family_server: tuple[str, ServerProcess]) -> None:
    _, server = family_server
    api = client(server)
    reply = api.chat.completions.create(
        model=server.model,
        messages=user_message(),
        max_tokens=6,
        n=3,
        seed=1,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens == 18
    greedy = [
        api.chat.completions.create(
            model=server.model, messages=user_message(), max_tokens=8, temperature=0
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert greedy[0] == greedy[1]


def test_stop_string_ends_the_choice(family_server: tuple[str, ServerProcess]) -> None:
    _, server = family_server
    api = client(server)
    full = (
        api.chat.completions.create(
            model=server.model,
            messages=user_message(),
            max_tokens=40,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .message.content
    )
    if len(full) < 4:
        pytest.skip(f"the random weights wrote too little text to cut: {full!r}")
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = api.chat.completions.create(
        model=server.model,
        messages=user_message(),
        max_tokens=40,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    ).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop)]


#: The special tokens of the tiny families' tokenizers: <s>, </s>, <unk>, <|endoftext|>, ...
SPECIAL_TOKEN = re.compile(r"</?s>|<unk>|<\|[a-z_]+\|>")


def test_logprobs(family_server: tuple[str, ServerProcess]) -> None:
    """Each engine returns each token's logprob and its most likely alternatives."""
    _, server = family_server

    def ask() -> openai.types.chat.ChatCompletion:
        return client(server).chat.completions.create(
            model=server.model,
            messages=user_message(image_data_url(336, 336)),
            max_tokens=5,
            logprobs=True,
            top_logprobs=3,
            extra_body={"ignore_eos": True},
        )

    choice = ask().choices[0]
    entries = choice.logprobs.content
    assert len(entries) == 5
    for entry in entries:
        assert entry.logprob <= 0
        ranked = [top.logprob for top in entry.top_logprobs]
        assert len(ranked) == 3 and ranked == sorted(ranked, reverse=True)
        assert entry.logprob <= ranked[0]
    # With ignore_eos a special token (<|endoftext|>, </s>) may be sampled mid-answer: its
    # logprob entry names it, as vLLM's does, while the content leaves it out.
    tokens = [entry.token for entry in entries if not SPECIAL_TOKEN.fullmatch(entry.token)]
    assert "".join(tokens) == choice.message.content


#: A schema whose every valid answer is short, so random weights finish it within max_tokens.
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "ok": {"type": "boolean"}},
    "required": ["answer", "ok"],
    "additionalProperties": False,
}


def structured(server: ServerProcess, response_format: dict, max_tokens: int) -> tuple[str, str]:
    """(content, finish reason) of a request constrained by ``response_format``."""
    choice = (
        client(server)
        .chat.completions.create(
            model=server.model,
            messages=user_message(text="Answer in JSON."),
            max_tokens=max_tokens,
            seed=3,
            response_format=response_format,  # type: ignore[arg-type]
        )
        .choices[0]
    )
    return choice.message.content or "", str(choice.finish_reason)


@pytest.mark.parametrize("kind", ["json_schema", "json_object"])
def test_response_format_constrains_random_weights(
    family_server: tuple[str, ServerProcess], kind: str
) -> None:
    """Structured outputs (vLLM's own; xgrammar on the transformers engine) make even random
    weights write valid JSON."""
    _, server = family_server
    response_format: dict = {"type": "json_object"}
    if kind == "json_schema":
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA},
        }
    content, reason = structured(server, response_format, 300)
    if kind == "json_object" and reason == "length":
        # Random weights may stay inside a string for long; what they wrote is still JSON's.
        assert content.lstrip().startswith("{")
        return
    assert reason == "stop", content
    value = json.loads(content)
    assert isinstance(value, dict)
    if kind == "json_schema":
        assert set(value) == {"answer", "ok"}
        assert value["answer"] in ("yes", "no") and isinstance(value["ok"], bool)


def test_detail_changes_image_tokens_as_the_family_says(
    family_server: tuple[str, ServerProcess],
) -> None:
    family, server = family_server
    rule = get_family(family)

    def prompt_tokens(detail: str) -> int:
        message = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": PROMPT},
                    {
                        "type": "image_url",
                        "image_url": {"url": image_data_url(1024, 768), "detail": detail},
                    },
                ],
            }
        ]
        reply = client(server).chat.completions.create(
            model=server.model,
            messages=message,
            max_tokens=1,  # type: ignore[arg-type]
        )
        return reply.usage.prompt_tokens

    high, low = prompt_tokens("high"), prompt_tokens("low")
    assert high - low == rule.image_tokens(1024, 768, "high") - rule.image_tokens(1024, 768, "low")


def test_too_many_images_is_a_400(family_server: tuple[str, ServerProcess]) -> None:
    _, server = family_server
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(
            model=server.model, messages=user_message(*[image_data_url(8, 8)] * 9), max_tokens=1
        )
    assert_openai_error(err.value, 400, "messages")
    assert err.value.code == "too_many_images"


# -- errors ----------------------------------------------------------------------------------------


def assert_openai_error(exc: openai.APIStatusError, status: int, param: str | None) -> None:
    assert exc.status_code == status
    error = exc.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,@@not-b64@@"},
                        }
                    ],
                }
            ],
            "messages[0].content[0].image_url",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "hi"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,aGVsbG8gd29ybGQ="},
                        },
                    ],
                }
            ],
            "messages[0].content[1].image_url",
        ),
        ([], "messages"),
    ],
    ids=["bad-base64", "not-an-image", "empty-messages"],
)
def test_bad_input_is_a_400(demo_server: ServerProcess, messages: list, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(demo_server).chat.completions.create(model=demo_server.model, messages=messages)
    assert_openai_error(err.value, 400, param)


def test_unknown_model_is_a_404(demo_server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(demo_server).chat.completions.create(model="gpt-4o", messages=user_message())
    assert_openai_error(err.value, 404, "model")


def test_wrong_type_for_max_tokens_is_a_400(demo_server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(demo_server).chat.completions.create(
            model=demo_server.model,
            messages=user_message(),
            max_tokens="ten",  # type: ignore[arg-type]
        )
    assert_openai_error(err.value, 400, "max_tokens")


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/no/such/route", None, 404),
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("GET", "/v1/chat/completions", None, 405),
    ],
)
def test_every_error_has_openai_shape(
    demo_server: ServerProcess, method: str, path: str, body: bytes | None, status: int
) -> None:
    response = httpx.request(
        method, demo_server.url + path, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert "detail" not in response.text


def test_context_overflow_is_a_400(family_server: tuple[str, ServerProcess]) -> None:
    _, server = family_server
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(
            model=server.model, messages=user_message(), max_tokens=100_000
        )
    assert_openai_error(err.value, 400, "messages")
    assert err.value.code == "context_length_exceeded"


# -- concurrency and cancellation ---------------------------------------------------------------


async def stream_one(
    api: openai.AsyncOpenAI, model: str, i: int, tokens: int = 256
) -> tuple[str, str | None]:
    """Stream one text request of ``tokens`` tokens: (text, finish reason). Decoding is what
    batching shares; an image's prefill (up to 3,330 tokens for InternVL) each request does
    alone, so it would hide the sharing on a CPU."""
    stream = await api.chat.completions.create(
        model=model,
        messages=user_message(text=f"Describe image {i}."),
        max_tokens=tokens,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    text, reason = "", None
    async for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        reason = chunk.choices[0].finish_reason or reason
    return text, reason


def step_sizes(server: ServerProcess) -> tuple[float, float]:
    """``vlmserve_engine_step_requests``: (engine steps, requests summed over those steps)."""
    name = "vlmserve_engine_step_requests"
    return server.metric(f"{name}_count"), server.metric(f"{name}_sum")


def test_eight_concurrent_streams_are_batched(family_server: tuple[str, ServerProcess]) -> None:
    """Continuous batching shown, not assumed: while 8 streams run, the engine's steps decode
    several requests each on average (its step histogram, read before and after, so the check
    does not depend on this process polling at the right moment)."""
    _, server = family_server
    # vLLM decodes the tiny models so fast that 256-token requests may not overlap in a step.
    tokens = 1024 if server.engine == "vllm" else 256

    async def main() -> list[tuple[str, str | None]]:
        api = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        return await asyncio.gather(*(stream_one(api, server.model, i, tokens) for i in range(8)))

    steps_before, requests_before = step_sizes(server)
    results = asyncio.run(main())
    steps, requests = step_sizes(server)
    assert [reason for _, reason in results] == ["length"] * 8
    assert all(text for text, _ in results)
    # Alone, each step would decode 1 request; 8 overlapping streams average well above that.
    occupancy = (requests - requests_before) / (steps - steps_before)
    assert occupancy > 2, occupancy


def wait_for_idle(server: ServerProcess, timeout: float = 15) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = server.metric("vlmserve_requests_running")
        if running == 0:
            return running
        time.sleep(0.1)
    return server.metric("vlmserve_requests_running")


def long_request(server: ServerProcess, stream: bool) -> dict:
    """A text-only request that decodes for seconds: vLLM's servers here have an 8,192-token
    context and decode the tiny models in well under a millisecond a token when the machine is
    idle; the transformers engine is slower, and its tiny models' contexts are 4,096 at least."""
    return {
        "model": server.model,
        "messages": user_message(),
        "max_tokens": 8000 if server.engine == "vllm" else 3500,
        "stream": stream,
        "ignore_eos": True,
    }


def aborted_after(server: ServerProcess) -> list[int]:
    """The completion-token counts of the requests the server's log says it aborted."""
    found = re.findall(r"request aborted in the engine after (\d+) completion tokens", server.log())
    return [int(n) for n in found]


def test_disconnect_mid_stream_aborts_the_engine_request(
    family_server: tuple[str, ServerProcess],
) -> None:
    """Closing a stream a few events in aborts its request well short of ``max_tokens``.

    Read from the server's log rather than by polling ``/metrics`` while the stream runs: on a
    2-core machine with vLLM's engine busy, this test process can wait seconds for a CPU
    (measured: 6.5 s in the run queue), long enough for a fast engine to finish the request.
    """
    _, server = family_server
    body = long_request(server, stream=True)
    before = len(aborted_after(server))
    with httpx.stream(
        "POST", server.base_url + "/chat/completions", json=body, timeout=30
    ) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
    assert wait_for_idle(server) == 0
    aborted = aborted_after(server)[before:]
    assert len(aborted) == 1, server.log()[-2000:]
    assert 0 < aborted[0] < body["max_tokens"]


def test_disconnect_while_waiting_aborts_non_streaming(
    family_server: tuple[str, ServerProcess],
) -> None:
    """A client that hangs up on a non-streaming request, once the engine runs it, stops it.

    A raw socket closes at once when the engine reports the request running; a client timeout
    would need this process to be scheduled on time, which a busy 2-core machine does not
    promise (see the streaming test above).
    """
    _, server = family_server
    request = long_request(server, stream=False)
    body = json.dumps(request).encode()
    before = len(aborted_after(server))
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 60
        while server.metric("vlmserve_requests_running") < 1:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.05)
    assert wait_for_idle(server) == 0
    assert "client disconnected" in server.log()
    aborted = aborted_after(server)[before:]
    assert len(aborted) == 1 and aborted[0] < request["max_tokens"]


def test_catalogue_name_serves_from_the_hf_cache_offline(tiny_model, tmp_path) -> None:
    """`--model llava-1.5-7b` loads the snapshot already in HF_HOME, with no network."""
    hf_home = tmp_path / "hf"
    hf_cache_snapshot(hf_home, "llava-hf/llava-1.5-7b-hf", tiny_model("llava"))
    server = start_server(
        ["--model", "llava-1.5-7b"],
        tmp_path / "server.log",
        env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"},
    )
    try:
        assert server.model == "llava-1.5-7b"
        reply = client(server).chat.completions.create(
            model="llava-1.5-7b", messages=user_message(image_data_url(64, 64)), max_tokens=2
        )
        assert reply.usage.prompt_tokens > 576
    finally:
        server.stop()


def test_absent_model_fails_at_once_with_a_clear_message(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vlmserve.cli.main", "serve", "--model", "llava-1.6-34b"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "llava-hf/llava-v1.6-34b-hf" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_the_chart_scales_on_are_exported(demo_server: ServerProcess) -> None:
    """Every vlmserve_* metric the Helm chart names is one the server exports."""
    named = set()
    for path in (REPO / "helm").rglob("*"):
        if path.is_file():
            named |= set(re.findall(r"vlmserve_[a-z_]+", path.read_text()))
    exported = httpx.get(demo_server.url + "/metrics").text
    assert named, "the chart names no metric"
    for name in named:
        assert f"\n{name} " in exported or f"\n{name}{{" in exported, name
