"""Tool planning and parsing, and the grammar's token masks, without a model or a server.

The grammar tests drive xgrammar with a real tiny tokenizer and *random logits*: whatever a model
would say, a constrained sequence must parse and match its schema within its token budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_checkpoint
from vlmserve.api.errors import BadRequestError
from vlmserve.api.protocol import FunctionDefinition, NamedFunction, NamedToolChoice, ToolDefinition
from vlmserve.api.tools import ToolStream, plan_tools
from vlmserve.engine.errors import RequestRejected
from vlmserve.engine.grammar import Grammars, check_response_format, closing_window

#: The API layer refuses with BadRequestError, the grammar engine with RequestRejected.
REFUSED = (BadRequestError, RequestRejected)
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}},
    },
    "required": ["name", "age", "tags", "pet"],
    "additionalProperties": False,
}


def tool(name: str, parameters: dict | None = None) -> ToolDefinition:
    return ToolDefinition(
        type="function", function=FunctionDefinition(name=name, parameters=parameters)
    )


def test_auto_reads_tool_call_blocks_and_keeps_other_text() -> None:
    plan = plan_tools([tool("f"), tool("g")], "auto", True, False)
    assert plan is not None
    text = 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    text += '<tool_call>{"name": "g", "arguments": {}}</tool_call>'
    content, calls = plan.parse(text)
    assert content == "Sure."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("f", {"x": 1}),
        ("g", {}),
    ]
    assert plan.parse('<tool_call>{"name": "nope", "arguments": {}}</tool_call>')[1] == []
    assert plan.parse("<tool_call>{broken</tool_call>") == ("<tool_call>{broken</tool_call>", [])
    single = plan_tools([tool("f"), tool("g")], "auto", False, False)
    assert single is not None and len(single.parse(text)[1]) == 1


def test_streamed_auto_output_holds_a_partial_tag_and_sends_calls_at_the_end() -> None:
    plan = plan_tools([tool("f")], None, True, False)
    assert plan is not None
    stream = ToolStream(plan)
    assert stream.feed("Hello <tool") == ("Hello ", [])
    assert stream.feed('_call>{"name": "f", ') == ("", [])
    assert stream.feed('"arguments": {"a": 2}}</tool_call>') == ("", [])
    content, deltas = stream.finish()
    assert content == "" and stream.called
    (delta,) = deltas
    assert (delta.index, delta.function.name) == (0, "f") and delta.id
    assert json.loads(delta.function.arguments or "") == {"a": 2}
    text_only = ToolStream(plan)
    assert text_only.feed("a <") == ("a ", [])
    assert text_only.feed("b") == ("<b", [])
    assert text_only.finish() == ("", [])


def test_named_function_streams_its_arguments() -> None:
    choice = NamedToolChoice(type="function", function=NamedFunction(name="f"))
    plan = plan_tools([tool("f", SCHEMA)], choice, True, False)
    assert plan is not None and plan.response_format() == {
        "type": "json_schema",
        "json_schema": {"name": "tool_calls", "schema": SCHEMA},
    }
    stream = ToolStream(plan)
    _, (header,) = stream.feed("")
    assert header.function.name == "f" and header.function.arguments == ""
    _, (piece,) = stream.feed('{"na')
    assert piece.id is None and piece.function.arguments == '{"na'


def test_required_schema_hoists_defs_and_limits_calls() -> None:
    ref = {"type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}, "$defs": {"P": {}}}
    plan = plan_tools([tool("f", ref), tool("g")], "required", False, False)
    assert plan is not None
    schema = plan.response_format()["json_schema"]["schema"]  # type: ignore[index]
    assert schema["$defs"] == {"P": {}} and schema["maxItems"] == 1
    assert "$defs" not in schema["items"]["anyOf"][0]["properties"]["arguments"]
    clash = {**ref, "$defs": {"P": {"type": "string"}}}
    both = plan_tools([tool("f", ref), tool("g", clash)], "required", True, False)
    assert both is not None
    with pytest.raises(REFUSED) as caught:
        both.response_format()
    assert caught.value.param == "tools[1].function.parameters"


@pytest.mark.parametrize(
    ("tools", "choice", "with_format", "param"),
    [
        (None, "required", False, "tool_choice"),
        ([tool("f"), tool("f")], "auto", False, "tools[1].function.name"),
        ([tool("f", {"type": "nope"})], "auto", False, "tools[0].function.parameters"),
        (
            [tool("f")],
            NamedToolChoice(type="function", function=NamedFunction(name="g")),
            False,
            "tool_choice",
        ),  # noqa: E501
        ([tool("f")], "required", True, "tool_choice"),
    ],
)
def test_tool_problems_name_their_field(tools, choice, with_format, param) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(REFUSED) as caught:
        plan = plan_tools(tools, choice, True, with_format)
        assert plan is not None
        plan.response_format()
    assert caught.value.param == param


def test_uncompilable_schema_names_response_format() -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}
    with pytest.raises(RequestRejected) as caught:
        check_response_format(bad)
    assert caught.value.param == "response_format"


@pytest.fixture(scope="module")
def grammars(tmp_path_factory: pytest.TempPathFactory) -> Grammars:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        tiny_checkpoint("llava", Path(tmp_path_factory.mktemp("tiny")))
    )
    return Grammars(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("max_tokens", [96, 200])
def test_random_logits_still_give_schema_json(grammars: Grammars, seed: int, max_tokens: int):  # type: ignore[no-untyped-def]
    """What a random-weight model does: sample from noise, masked by the grammar."""
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    constraint = grammars.constraint(grammars.compile(fmt))
    assert constraint is not None
    generator = torch.Generator().manual_seed(seed)
    tokens: list[int] = []
    eos = int(grammars.tokenizer.eos_token_id)
    while len(tokens) < max_tokens:
        logits = torch.randn(grammars.vocab_size, generator=generator) * 3
        steer = max_tokens - len(tokens) <= closing_window(max_tokens)
        assert constraint.apply(logits, steer)
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        constraint.accept(token)
        if token == eos:
            break
        tokens.append(token)
    answer = json.loads(grammars.tokenizer.decode(tokens))
    assert set(answer) == {"name", "age", "tags", "pet"} and isinstance(answer["age"], int)
    assert all(isinstance(t, str) for t in answer["tags"])
