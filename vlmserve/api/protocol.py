"""OpenAI chat-completions protocol models: what clients send and what vlmserve answers.

Only the fields vlmserve acts on are declared, plus the few it ignores on purpose (``user``,
``metadata``: bookkeeping fields that change no output); any other field is a 400 naming it, so a
client never silently loses a feature it asked for. Integer fields are strict:
``"max_tokens": "10"`` is a 400, not a silent coercion.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    StrictStr,
    model_serializer,
)

from vlmserve.images.detail import Detail


class RequestModel(BaseModel):
    """Base of every request model: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class TextPart(RequestModel):
    """A text part of a message's content."""

    type: Literal["text"]
    text: StrictStr


class ImageURL(RequestModel):
    """An image given as a ``data:`` URL (or, where allowed, an http(s) or file URL)."""

    url: StrictStr
    detail: Detail | None = None


class ImagePart(RequestModel):
    """An image part of a message's content."""

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(RequestModel):
    """A function the model called, with its arguments as a JSON string."""

    name: StrictStr
    arguments: StrictStr


class ToolCall(RequestModel):
    """One tool call of an assistant message."""

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(RequestModel):
    """One message of the conversation; ``tool`` messages answer an assistant's tool call."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: StrictStr | None = None


class FunctionDefinition(RequestModel):
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolDefinition(RequestModel):
    """One entry of ``tools``: only function tools exist in the chat API."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(RequestModel):
    """The function a named ``tool_choice`` forces."""

    name: StrictStr


class NamedToolChoice(RequestModel):
    """``tool_choice`` naming one function: the model must call it."""

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class StreamOptions(RequestModel):
    """Streaming options: ``include_usage`` adds a final chunk with token counts."""

    include_usage: StrictBool = False


class JSONSchemaFormat(RequestModel):
    """A named JSON schema the output must match (``strict`` or not, it is always enforced)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(RequestModel):
    """Structured output: plain text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatCompletionRequest(RequestModel):
    """``POST /v1/chat/completions``."""

    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: StrictInt = Field(default=1, ge=1, le=16)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    #: Ignored on purpose, as bookkeeping that changes no output.
    user: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None
    # Extensions, as in vLLM: exact output lengths (for benchmarks), and two sampling knobs
    # that checkpoints set in generation_config.json.
    min_tokens: StrictInt = Field(default=0, ge=0)
    ignore_eos: StrictBool = False
    top_k: StrictInt | None = Field(default=None, ge=-1)
    repetition_penalty: float | None = Field(default=None, gt=0)


class Usage(BaseModel):
    """Token counts; ``prompt_tokens`` includes every image token."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The generated message of one choice."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _without_empty_tool_calls(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Leave ``tool_calls`` out when there are none, as OpenAI's API does."""
        data = handler(self)
        if isinstance(data, dict) and data.get("tool_calls") is None:
            data.pop("tool_calls", None)
        return data


class Choice(BaseModel):
    """One complete choice."""

    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: Any = None


class ChatCompletion(BaseModel):
    """A non-streaming answer."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class DeltaFunctionCall(BaseModel):
    """A piece of a streamed function call: its name first, then pieces of its arguments."""

    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A piece of one streamed tool call; ``index`` says which call it extends."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(BaseModel):
    """New content of one choice in a stream."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    """One choice's delta in a streamed chunk."""

    index: int
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlmserve"


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """The body of every error."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """``{"error": {...}}`` as OpenAI's API returns it."""

    error: ErrorDetail


def completion_id() -> str:
    """A fresh ``chatcmpl-`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    """Unix seconds, for ``created``."""
    return int(time.time())
