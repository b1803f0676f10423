"""OpenAI Responses protocol (``POST /v1/responses``), stateless.

vlmserve keeps no conversation state: ``store: true`` and ``previous_response_id`` are refused
with a 400 (the client sends the whole conversation in ``input`` instead). Input items are
messages (text and image parts), earlier function calls and their outputs.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from vlmserve.api.protocol import Detail, RequestModel


class InputText(RequestModel):
    """Text in an input message."""

    type: Literal["input_text", "output_text"]
    text: StrictStr
    #: Sent back by clients that replay an earlier output; carries nothing the model reads.
    annotations: list[Any] | None = None


class InputImage(RequestModel):
    """An image in an input message: a ``data:`` URL or, where allowed, an http(s) URL."""

    type: Literal["input_image"]
    image_url: StrictStr
    detail: Detail = "auto"


InputPart = Annotated[InputText | InputImage, Field(discriminator="type")]


class InputMessage(RequestModel):
    """One message of ``input``."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: StrictStr | list[InputPart]
    #: Sent back by clients that replay an earlier output item.
    id: StrictStr | None = None
    status: StrictStr | None = None


class FunctionCallItem(RequestModel):
    """A function call the model made earlier, replayed by the client."""

    type: Literal["function_call"]
    call_id: StrictStr
    name: StrictStr
    arguments: StrictStr
    id: StrictStr | None = None
    status: StrictStr | None = None


class FunctionCallOutputItem(RequestModel):
    """The result of an earlier function call."""

    type: Literal["function_call_output"]
    call_id: StrictStr
    output: StrictStr
    id: StrictStr | None = None
    status: StrictStr | None = None


#: Messages may omit ``type``, so the union is tried in order rather than by discriminator.
InputItem = Annotated[
    InputMessage | FunctionCallItem | FunctionCallOutputItem, Field(union_mode="left_to_right")
]


class TextFormat(RequestModel):
    """``text.format``: plain text, any JSON object, or JSON matching a named schema."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: StrictStr | None = None
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class TextConfig(RequestModel):
    """``text``: the output's format."""

    format: TextFormat | None = None


class FunctionTool(RequestModel):
    """A function tool, in the Responses API's flat shape."""

    type: Literal["function"]
    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class NamedFunctionChoice(RequestModel):
    """``tool_choice`` forcing one function."""

    type: Literal["function"]
    name: StrictStr


class ResponsesRequest(RequestModel):
    """``POST /v1/responses``."""

    model: StrictStr
    input: StrictStr | Annotated[list[InputItem], Field(min_length=1)]
    instructions: StrictStr | None = None
    max_output_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: StrictBool = True
    stream: StrictBool = False
    #: Stateless server: only ``false`` is accepted (a 400 names ``store`` otherwise).
    store: StrictBool | None = None
    #: Stateless server: refused with a 400.
    previous_response_id: StrictStr | None = None
    truncation: Literal["disabled"] | None = None
    #: Ignored on purpose, as bookkeeping that changes no output.
    user: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None
    # Extensions for benchmarks and tests, as on chat: exact output lengths.
    min_tokens: StrictInt = Field(default=0, ge=0)
    ignore_eos: StrictBool = False


class OutputText(BaseModel):
    """Text of an output message."""

    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    """The assistant's message."""

    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    """A function call the model made."""

    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class InputTokensDetails(BaseModel):
    """Cached input tokens (vlmserve reports none)."""

    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    """Reasoning tokens (vlmserve's models have none)."""

    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    """Token counts; ``input_tokens`` includes every image token."""

    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    """Why a response is incomplete."""

    reason: Literal["max_output_tokens"]


class Response(BaseModel):
    """A response object: whole, or the snapshot carried by streamed lifecycle events."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    model: str
    output: list[OutputMessage | OutputFunctionCall] = Field(default_factory=list)
    incomplete_details: IncompleteDetails | None = None
    error: None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    store: bool = False
    previous_response_id: None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    usage: ResponseUsage | None = None


def new_id(prefix: str) -> str:
    """A fresh id: ``resp``, ``msg`` or ``fc`` and a random hex tail."""
    return f"{prefix}_{uuid.uuid4().hex}"
