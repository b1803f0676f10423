"""Every everyday OpenAI client call, through the real client libraries, against the real server.

Structured output, tools, logprobs, ``/v1/completions`` and ``/v1/responses`` on tiny
random-weight checkpoints: the grammar makes structured answers parse and match their schema
even though the weights are random, so the assertions here hold for any weights.
"""

from __future__ import annotations

import json
import os

import httpx
import instructor
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field

from tests.conftest import family_engine_params
from tests.helpers import ServerProcess, image_data_url, image_question

#: LLaVA and InternVL, on both engines: the servers are the session's (shared with test_api).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize(
        "family_server", family_engine_params(("llava", "internvl")), indirect=True
    ),
]
#: Enough tokens for the grammar to finish any answer below, even from random weights.
ROOM = 200
#: A short name: 1 to 12 letters or spaces.
NAME = "^[A-Za-z ]{1,12}$"


class Pet(BaseModel):
    """A structured answer: every field required, no others.

    Bounded, so the grammar alone ends the answer within :data:`ROOM` tokens: vLLM's structured
    outputs keep random weights inside the schema but do not steer them to close a string (the
    transformers engine does, near the end of ``max_tokens``). The string is bounded by a
    ``pattern``, not ``maxLength``: xgrammar 0.2.9 lets raw control characters into a
    ``maxLength`` string (mlc-ai/xgrammar#800), which is not JSON.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    legs: int = Field(ge=0, le=8)
    indoor: bool


class LooseNote(BaseModel):
    """For JSON mode, which asks only for *some* JSON object: any object validates."""

    title: str = ""


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "pattern": NAME},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "pattern": NAME}},
            "required": ["zone"],
        },
    },
}


@pytest.fixture()
def server(family_server: tuple[str, ServerProcess]) -> ServerProcess:
    """The session's real server for this test's family and engine (see ``conftest``)."""
    return family_server[1]


def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


# -- structured output ---------------------------------------------------------------------------


def test_sdk_parse_with_a_pydantic_model(server: ServerProcess) -> None:
    reply = sdk(server).chat.completions.parse(
        model=server.model, messages=image_question(), response_format=Pet, max_tokens=ROOM
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Pet)


def test_json_object_streams_valid_json(server: ServerProcess) -> None:
    stream = sdk(server).chat.completions.create(
        model=server.model,
        messages=image_question(),
        response_format={"type": "json_object"},
        max_tokens=ROOM,
        temperature=1.0,
        seed=3,
        stream=True,
    )
    chunks = [c.choices[0] for c in stream if c.choices]
    text = "".join(c.delta.content or "" for c in chunks)
    if server.engine == "vllm" and chunks[-1].finish_reason == "length":
        # vLLM keeps random weights inside JSON's grammar but does not steer them to close an
        # open string before max_tokens (the transformers engine does): what came is JSON's.
        assert text.startswith('{"') and "\n" not in text
        return
    assert isinstance(json.loads(text), dict)


def test_langchain_with_structured_output(server: ServerProcess) -> None:
    chat = ChatOpenAI(
        model=server.model, base_url=server.base_url, api_key="unused", max_tokens=ROOM
    )
    for method in ("json_schema", "function_calling"):
        pet = chat.with_structured_output(Pet, method=method).invoke("Invent a pet.")
        assert isinstance(pet, Pet), method


def test_litellm_completion_with_response_format(server: ServerProcess) -> None:
    # Offline: LiteLLM reads its bundled model cost map instead of fetching one on import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    reply = litellm.completion(
        model=f"openai/{server.model}",
        api_base=server.base_url,
        api_key="unused",
        messages=image_question(),
        response_format=Pet,
        max_tokens=ROOM,
    )
    Pet.model_validate_json(reply.choices[0].message.content)


@pytest.mark.parametrize("mode", [instructor.Mode.JSON, instructor.Mode.TOOLS])
def test_instructor(server: ServerProcess, mode: instructor.Mode) -> None:
    client = instructor.from_openai(sdk(server), mode=mode)
    model = Pet if mode == instructor.Mode.TOOLS else LooseNote
    answer = client.chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "Invent a pet."}],
        response_model=model,
        max_tokens=ROOM,
        max_retries=0,
        seed=1,  # JSON mode asks for any object: random weights on vLLM may not close one
    )
    assert isinstance(answer, model)


# -- tools ---------------------------------------------------------------------------------------


def test_named_tool_choice_forces_matching_arguments(server: ServerProcess) -> None:
    reply = sdk(server).chat.completions.create(
        model=server.model,
        messages=image_question("What is the weather where this was taken?"),
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=ROOM,
    )
    message = reply.choices[0].message
    assert message.content is None
    (call,) = message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")


def test_required_tool_choice_and_a_tool_round_trip(server: ServerProcess) -> None:
    client = sdk(server)
    messages: list[dict] = [{"role": "user", "content": "Weather and time in Oslo?"}]
    reply = client.chat.completions.create(
        model=server.model,
        messages=messages,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=ROOM,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"})
    follow_up = client.chat.completions.create(
        model=server.model, messages=messages, tools=[WEATHER, TIME], max_tokens=8
    )
    assert follow_up.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_streamed_tool_call_deltas(server: ServerProcess) -> None:
    stream = sdk(server).chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "Time in Lima?"}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=ROOM,
        stream=True,
    )
    names, arguments, ids = [], "", set()
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            assert delta.index == 0
            ids.add(delta.id) if delta.id else None
            names.append(delta.function.name) if delta.function.name else None
            arguments += delta.function.arguments or ""
    assert names == ["get_time"] and len(ids) == 1
    assert isinstance(json.loads(arguments)["zone"], str)


def test_auto_tool_choice_answers_text_or_calls(server: ServerProcess) -> None:
    reply = sdk(server).chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "Hello"}],
        tools=[WEATHER],
        max_tokens=16,
    )
    message = reply.choices[0].message
    assert message.content or message.tool_calls


# -- logprobs ------------------------------------------------------------------------------------


def test_logprobs_and_top_logprobs(server: ServerProcess) -> None:
    reply = sdk(server).chat.completions.create(
        model=server.model,
        messages=image_question(),
        max_tokens=6,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.top_logprobs[0].logprob >= entry.logprob


# -- /v1/completions -----------------------------------------------------------------------------


def test_completions(server: ServerProcess) -> None:
    client = sdk(server)
    reply = client.completions.create(
        model=server.model,
        prompt=["Once upon a time", "The cat"],
        max_tokens=5,
        n=2,
        seed=1,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    assert reply.object == "text_completion" and len(reply.choices) == 4
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == 5 and all(len(top) == 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0
    assert reply.usage.completion_tokens == 20
    echoed = client.completions.create(
        model=server.model, prompt="The cat", max_tokens=3, echo=True
    )
    assert echoed.choices[0].text.startswith("The cat")
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=server.model, prompt="x", echo=True, logprobs=1)
    assert caught.value.body["param"] == "echo"


def test_completions_stream_with_usage(server: ServerProcess) -> None:
    stream = sdk(server).completions.create(
        model=server.model,
        prompt="Hello",
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 7
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


# -- /v1/responses -------------------------------------------------------------------------------


def responses_input() -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is in this image?"},
                {"type": "input_image", "image_url": image_data_url(64, 48), "detail": "low"},
            ],
        }
    ]


def test_responses_with_an_image(server: ServerProcess) -> None:
    client = sdk(server)
    response = client.responses.create(
        model=server.model,
        input=responses_input(),
        instructions="Be brief.",
        max_output_tokens=9,
        extra_body={"ignore_eos": True},
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text and response.usage.output_tokens == 9
    chat = client.chat.completions.create(
        model=server.model,
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": image_data_url(64, 48), "detail": "low"},
                    },
                ],
            },
        ],
        max_tokens=1,
    )
    assert response.usage.input_tokens == chat.usage.prompt_tokens


def test_responses_stream_events(server: ServerProcess) -> None:
    events = list(
        sdk(server).responses.create(
            model=server.model,
            input=responses_input(),
            max_output_tokens=ROOM,
            stream=True,
            text={
                "format": {
                    "type": "json_schema",
                    "name": "pet",
                    "schema": Pet.model_json_schema(),
                    "strict": True,
                }
            },
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    Pet.model_validate_json(text)
    assert events[-1].response.output_text == text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_function_tools(server: ServerProcess) -> None:
    tool = {"type": "function", **WEATHER["function"]}
    response = sdk(server).responses.create(
        model=server.model,
        input="Weather in Oslo?",
        tools=[tool],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=ROOM,
    )
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert set(json.loads(call.arguments)) == {"city", "unit"}


@pytest.mark.parametrize(
    ("field", "value"), [("store", True), ("previous_response_id", "resp_123")]
)
def test_responses_state_is_refused(server: ServerProcess, field: str, value: object) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).responses.create(model=server.model, input="Hi", **{field: value})
    assert caught.value.body["param"] == field


# -- what every endpoint shares ------------------------------------------------------------------


def test_unknown_fields_are_refused_by_name(server: ServerProcess) -> None:
    body = {"model": server.model, "messages": [{"role": "user", "content": "Hi"}]}
    answer = httpx.post(f"{server.base_url}/chat/completions", json={**body, "logit_bias": {}})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "logit_bias"


def test_metrics_count_requests_per_endpoint(server: ServerProcess) -> None:
    client = sdk(server)
    client.completions.create(model=server.model, prompt="Hi", max_tokens=1)
    client.responses.create(model=server.model, input="Hi", max_output_tokens=1)
    text = httpx.get(f"{server.url}/metrics").text
    for path in ("/v1/completions", "/v1/responses"):
        assert f'endpoint="{path}"' in text
