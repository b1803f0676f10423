"""A corpus of bad requests for the reliability run: each must get a 4xx in OpenAI's shape.

The URLs that point at private or link-local addresses are literals the server refuses before it
connects (the reliability server runs with the default media settings). :func:`costly_cases`
are requests that would cost the server memory or CPU if it did not refuse them early: they must
be refused quickly, with a given status, while other clients go on being served.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

Case = tuple[str, str, str, dict[str, str], bytes | None]
JSON = {"content-type": "application/json"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _image_urls() -> dict[str, str]:
    """Image URLs that must each be refused, by name."""
    png = _encoded(Image.new("RGB", (32, 32), "red"), "PNG")
    bomb = _encoded(Image.new("1", (20_000, 20_000)), "PNG")  # small file, 400 M pixels
    return {
        "bad base64": "data:image/png;base64,@@@@",
        "not an image": _data_url(b"hello world, not an image"),
        "truncated png": _data_url(png[: len(png) // 2]),
        "decompression bomb": _data_url(bomb),
        "tiff (not accepted)": _data_url(_encoded(Image.new("RGB", (8, 8)), "TIFF")),
        "svg": _data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        "data url without base64": "data:image/png,rawbytes",
        "cloud metadata": "http://169.254.169.254/latest/meta-data/",
        "private address": "http://10.0.0.1/cat.png",
        "loopback": "http://127.0.0.1:1/cat.png",
        "ipv4-mapped loopback": "http://[::ffff:127.0.0.1]:1/cat.png",
        "unspecified": "http://0.0.0.0:1/cat.png",
        "file url": "file:///etc/passwd",
        "ftp url": "ftp://127.0.0.1/cat.png",
        "gopher url": "gopher://127.0.0.1:1/_",
        "malformed url": "http://[::1",
        "port out of range": "http://127.0.0.1:99999/cat.png",
        "no scheme": "cat.png",
        "empty url": "",
    }


def _chat(model: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    body.update(fields)
    return body


def _bodies(model: str) -> dict[str, Any]:
    """Request bodies that must each be refused, by name."""
    part = {"type": "text", "text": "x"}
    nine = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}] * 9
    return {
        "empty object": {},
        "json array": [],
        "no messages": {"model": model},
        "empty messages": _chat(model, messages=[]),
        "unknown role": _chat(model, messages=[{"role": "robot", "content": "hi"}]),
        "unknown part type": _chat(
            model, messages=[{"role": "user", "content": [{"type": "audio", "data": "x"}]}]
        ),
        "image part without url": _chat(
            model, messages=[{"role": "user", "content": [{"type": "image_url"}]}]
        ),
        "too many images": _chat(model, messages=[{"role": "user", "content": [part, *nine]}]),
        "unknown model": _chat("gpt-4o"),
        "model is a number": _chat(12),
        "max_tokens zero": _chat(model, max_tokens=0),
        "max_tokens a string": _chat(model, max_tokens="ten"),
        "max_tokens over the context": _chat(model, max_tokens=10**9),
        "temperature 5": _chat(model, temperature=5),
        "top_p 0": _chat(model, top_p=0),
        "n 1000": _chat(model, n=1000),
        "top_logprobs without logprobs": _chat(model, top_logprobs=2),
        "top_logprobs 50": _chat(model, logprobs=True, top_logprobs=50),
        "stop a number": _chat(model, stop=5),
        "stream a string": _chat(model, stream="yes"),
        "unknown field": _chat(model, logit_bias={"1": 5}),
        **_structured(model),
        **_tools(model),
    }


def _schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def _structured(model: str) -> dict[str, Any]:
    """Malformed ``response_format`` values."""
    return {
        "response_format unknown type": _chat(model, response_format={"type": "xml"}),
        "json_schema without a schema": _chat(
            model, response_format={"type": "json_schema", "json_schema": {"name": "x"}}
        ),
        "json_schema a string": _chat(model, response_format=_schema_format("object")),
        "json_schema unknown type": _chat(model, response_format=_schema_format({"type": "o"})),
        "json_schema dangling $ref": _chat(
            model,
            response_format=_schema_format(
                {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
            ),
        ),
        "json_schema bad name": _chat(
            model,
            response_format={"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
        ),
        "json_schema with ignore_eos": _chat(
            model, response_format={"type": "json_object"}, ignore_eos=True
        ),
    }


def _tool(name: str = "f", parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _tools(model: str) -> dict[str, Any]:
    """Malformed tools, tool choices and tool messages."""
    named = {"type": "function", "function": {"name": "g"}}
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    bad_call = {**call, "function": {"name": "f", "arguments": "{not json"}}
    user = {"role": "user", "content": "Hi"}
    return {
        "tool of unknown type": _chat(model, tools=[{"type": "retrieval"}]),
        "tool without a name": _chat(model, tools=[{"type": "function", "function": {}}]),
        "tool name with spaces": _chat(model, tools=[_tool("get weather")]),
        "tool parameters not a schema": _chat(model, tools=[_tool(parameters={"type": "x"})]),
        "two tools of one name": _chat(model, tools=[_tool(), _tool()]),
        "tool_choice without tools": _chat(model, tool_choice="required"),
        "tool_choice naming a missing tool": _chat(model, tools=[_tool()], tool_choice=named),
        "tool_choice unknown word": _chat(model, tools=[_tool()], tool_choice="always"),
        "forced tool and response_format": _chat(
            model,
            tools=[_tool()],
            tool_choice="required",
            response_format={"type": "json_object"},
        ),
        "tool message without tool_call_id": _chat(
            model, messages=[user, {"role": "tool", "content": "42"}]
        ),
        "tool message answering no call": _chat(
            model, messages=[user, {"role": "tool", "tool_call_id": "call_9", "content": "42"}]
        ),
        "tool call arguments not json": _chat(
            model, messages=[user, {"role": "assistant", "tool_calls": [bad_call]}]
        ),
        "tool_calls on a user message": _chat(
            model, messages=[{"role": "user", "content": "Hi", "tool_calls": [call]}]
        ),
        "tool call without an id": _chat(
            model,
            messages=[user, {"role": "assistant", "tool_calls": [{"function": call["function"]}]}],
        ),
    }


def _other_endpoints(model: str) -> list[tuple[str, str, Any]]:
    """(name, path, body) for bad completions and responses requests."""
    image = {"type": "input_image", "image_url": "data:image/png;base64,@@@@"}
    return [
        ("completions: no prompt", COMPLETIONS, {"model": model}),
        ("completions: empty prompt", COMPLETIONS, {"model": model, "prompt": ""}),
        ("completions: token-id prompt", COMPLETIONS, {"model": model, "prompt": [1, 2]}),
        ("completions: logprobs 9", COMPLETIONS, {"model": model, "prompt": "x", "logprobs": 9}),
        (
            "completions: echo with logprobs",
            COMPLETIONS,
            {"model": model, "prompt": "x", "echo": True, "logprobs": 1},
        ),
        ("completions: suffix", COMPLETIONS, {"model": model, "prompt": "x", "suffix": "y"}),
        ("completions: best_of 3", COMPLETIONS, {"model": model, "prompt": "x", "best_of": 3}),
        ("responses: no input", RESPONSES, {"model": model}),
        ("responses: empty input list", RESPONSES, {"model": model, "input": []}),
        ("responses: store", RESPONSES, {"model": model, "input": "x", "store": True}),
        (
            "responses: previous_response_id",
            RESPONSES,
            {"model": model, "input": "x", "previous_response_id": "resp_1"},
        ),
        (
            "responses: bad image",
            RESPONSES,
            {"model": model, "input": [{"role": "user", "content": [image]}]},
        ),
        (
            "responses: json_schema without schema",
            RESPONSES,
            {
                "model": model,
                "input": "x",
                "text": {"format": {"type": "json_schema", "name": "x"}},
            },
        ),
        (
            "responses: unknown tool type",
            RESPONSES,
            {"model": model, "input": "x", "tools": [{"type": "web_search"}]},
        ),
        (
            "responses: function output for no call",
            RESPONSES,
            {
                "model": model,
                "input": [{"type": "function_call_output", "call_id": "c", "output": "1"}],
            },
        ),
        (
            "responses: reasoning",
            RESPONSES,
            {"model": model, "input": "x", "reasoning": {"effort": "low"}},
        ),
    ]


def _surrogate(model: str) -> bytes:
    """Valid JSON whose string holds half of a UTF-16 pair: no tokenizer can encode it."""
    body = json.dumps(_chat(model, messages=[{"role": "user", "content": "SURROGATE"}]))
    return body.replace("SURROGATE", "hi \\ud804").encode()


def corpus(model: str) -> list[Case]:
    """(name, method, path, headers, body) for every bad request."""
    cases: list[Case] = []
    for name, url in _image_urls().items():
        content = [{"type": "text", "text": "What is this?"}]
        content.append({"type": "image_url", "image_url": {"url": url}})
        body = _chat(model, messages=[{"role": "user", "content": content}])
        cases.append((f"image: {name}", "POST", CHAT, JSON, json.dumps(body).encode()))
    for name, payload in _bodies(model).items():
        cases.append((f"body: {name}", "POST", CHAT, JSON, json.dumps(payload).encode()))
    for name, path, payload in _other_endpoints(model):
        cases.append((name, "POST", path, JSON, json.dumps(payload).encode()))
    cases += [
        ("invalid json", "POST", CHAT, JSON, b"{not json"),
        ("lone surrogate in content", "POST", CHAT, JSON, _surrogate(model)),
        ("empty body", "POST", CHAT, JSON, b""),
        ("not utf-8", "POST", CHAT, JSON, b'{"model": "\xff\xfe"}'),
        ("form body", "POST", CHAT, {"content-type": "text/plain"}, b"model=x"),
        ("deep nesting", "POST", CHAT, JSON, b"[" * 5000 + b"]" * 5000),
        ("GET on chat", "GET", CHAT, {}, None),
        ("GET on completions", "GET", COMPLETIONS, {}, None),
        ("unknown route", "GET", "/v1/embeddings", {}, None),
        ("unknown model route", "GET", "/v1/models/other", {}, None),
    ]
    return cases


#: Bytes of the oversized bodies: above the default limit (about 214 MB), and the size that
#: drove a server without a limit to the out-of-memory killer.
_CHUNK = b"x" * 1_000_000
_OPENING = b'{"model": "m", "messages": [{"role": "user", "content": "'
HUGE_BODY = len(_OPENING) + 300 * len(_CHUNK)


@dataclass(frozen=True)
class CostlyCase:
    """A request the server must refuse early: a fresh body each time it is sent."""

    name: str
    status: int
    headers: dict[str, str]
    body: Callable[[], Iterator[bytes]]


def _huge_body() -> Iterator[bytes]:
    """300 MB of a JSON-looking body, made as it is sent."""
    yield _OPENING
    for _ in range(300):
        yield _CHUNK


def _image_request(model: str, urls: list[str]) -> Callable[[], Iterator[bytes]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "What is this?"}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    body = json.dumps(_chat(model, messages=[{"role": "user", "content": content}])).encode()
    return lambda: iter([body])


def costly_cases(model: str) -> list[CostlyCase]:
    """Oversized bodies (declared and chunked), extreme aspect ratios, too many pixels in all."""
    strip = _data_url(_encoded(Image.new("RGB", (1, 60_000), "gray"), "PNG"))
    thread = _data_url(_encoded(Image.new("RGB", (20_000, 1), "gray"), "PNG"))
    # 14 megapixels each, a few kB of PNG: eight of them are 112 M pixels, over the 100 M total.
    medium = _data_url(_encoded(Image.new("RGB", (4000, 3500), "olive"), "PNG"))
    declared = {**JSON, "content-length": str(HUGE_BODY)}
    return [
        CostlyCase("300 MB body, Content-Length", 413, declared, _huge_body),
        CostlyCase("300 MB body, chunked", 413, JSON, _huge_body),
        CostlyCase("1x60000 PNG", 400, JSON, _image_request(model, [strip])),
        CostlyCase("20000x1 PNG", 400, JSON, _image_request(model, [thread])),
        CostlyCase("8 images of 14 MP", 400, JSON, _image_request(model, [medium] * 8)),
    ]
