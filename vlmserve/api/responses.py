"""The ``/v1/responses`` endpoint's edges (stateless): input items in, a response object out.

The input becomes chat messages (``instructions`` first, as a system message; function calls and
their outputs as assistant tool calls and tool results) and then goes the chat path's way:
:class:`vlmserve.api.chat.MessageReader`, the same tool planning, the engine's ``prepare``, one
:class:`vlmserve.api.serving.Generation`. Streams use the Responses API's typed events
(:mod:`vlmserve.api.responses_stream`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from vlmserve.api.chat import MessageReader, add_system_text, check_model
from vlmserve.api.errors import BadRequestError
from vlmserve.api.metrics import Metrics
from vlmserve.api.protocol import (
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    ImagePart,
    ImageURL,
    NamedFunction,
    NamedToolChoice,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolDefinition,
    now,
)
from vlmserve.api.protocol_responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputMessage,
    NamedFunctionChoice,
    OutputFunctionCall,
    OutputMessage,
    OutputText,
    Response,
    ResponsesRequest,
    new_id,
)
from vlmserve.api.responses_job import ResponseJob, finished
from vlmserve.api.responses_stream import events
from vlmserve.api.serving import Generation, UsageSink, guarded, sse
from vlmserve.api.tools import plan_tools
from vlmserve.engine.base import Engine, EngineRequest, SamplingOptions
from vlmserve.engine.grammar import check_schema

RESPONSES_PATH = "/v1/responses"


class ResponsesHandler:
    """Serves ``/v1/responses`` for one model on one engine."""

    def __init__(self, engine: Engine, model_id: str, metrics: Metrics, reader: MessageReader):
        self.engine = engine
        self.model_id = model_id
        self.metrics = metrics
        self.reader = reader

    async def prepare(self, body: ResponsesRequest, request_id: str) -> ResponseJob:
        """Refuse what needs state, turn the input into messages, and prepare it."""
        check_model(body.model, self.model_id)
        if body.store:
            raise BadRequestError(
                "This server keeps no responses: send store: false (or leave it out) and pass "
                "the whole conversation in input.",
                param="store",
            )
        if body.previous_response_id is not None:
            raise BadRequestError(
                "This server keeps no responses, so it cannot continue one: pass the whole "
                "conversation in input instead of previous_response_id.",
                param="previous_response_id",
            )
        response_format = _response_format(body)
        plan = plan_tools(
            _tools(body),
            _tool_choice(body),
            body.parallel_tool_calls,
            response_format is not None and response_format["type"] != "text",
        )
        messages, images = await self.reader.read(_messages(body), plan, field="input")
        if body.instructions:
            add_system_text(messages, body.instructions)
        sampling = SamplingOptions(
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            min_tokens=body.min_tokens,
            ignore_eos=body.ignore_eos,
            response_format=(plan.response_format() if plan else None) or response_format,
        )
        request = EngineRequest(request_id, sampling, messages=messages, images=images)
        return ResponseJob(await self.engine.prepare(request), plan, body)

    def _generation(
        self, job: ResponseJob, deadline: float, on_usage: UsageSink | None
    ) -> Generation:
        return Generation(
            self.engine, job.prepared, deadline, self.metrics, RESPONSES_PATH, on_usage
        )

    async def complete(
        self, job: ResponseJob, deadline: float, on_usage: UsageSink | None = None
    ) -> Response:
        """Run the request to the end and answer the whole response object."""
        tally = await self._generation(job, deadline, on_usage).collect()
        content, calls = job.plan.parse(tally.texts[0]) if job.plan else (tally.texts[0], [])
        response = job.snapshot(new_id("resp"), now())
        if content is not None:
            text = OutputText(text=content)
            response.output.append(OutputMessage(id=new_id("msg"), content=[text]))
        for call in calls:
            response.output.append(
                OutputFunctionCall(
                    id=new_id("fc"),
                    call_id=call.id,
                    name=call.function.name,
                    arguments=call.function.arguments,
                )
            )
        return finished(response, tally)

    async def open_stream(
        self, job: ResponseJob, deadline: float, on_usage: UsageSink | None = None
    ) -> AsyncIterator[str]:
        """Start the request; then stream the Responses API's events."""
        generation = self._generation(job, deadline, on_usage)
        await generation.start()
        return guarded(events(job, generation), lambda body: sse(body, "error"))


def _messages(body: ResponsesRequest) -> list[ChatMessage]:
    """The input as chat messages, one per input item (so errors can name ``input[i]``)."""
    if isinstance(body.input, str):
        return [ChatMessage(role="user", content=body.input)]
    out = []
    for item in body.input:
        if isinstance(item, InputMessage):
            out.append(ChatMessage(role=item.role, content=_content(item)))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(
                id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
            )
            out.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            out.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=item.output))
    return out


def _content(message: InputMessage) -> str | list[TextPart | ImagePart]:
    if isinstance(message.content, str):
        return message.content
    parts: list[TextPart | ImagePart] = []
    for part in message.content:
        if isinstance(part, InputImage):
            url = ImageURL(url=part.image_url, detail=part.detail)
            parts.append(ImagePart(type="image_url", image_url=url))
        else:
            parts.append(TextPart(type="text", text=part.text))
    return parts


def _tools(body: ResponsesRequest) -> list[ToolDefinition] | None:
    if not body.tools:
        return None
    return [
        ToolDefinition(
            type="function",
            function=FunctionDefinition(
                name=t.name, description=t.description, parameters=t.parameters, strict=t.strict
            ),
        )
        for t in body.tools
    ]


def _tool_choice(body: ResponsesRequest) -> ToolChoice | None:
    choice = body.tool_choice
    if isinstance(choice, NamedFunctionChoice):
        return NamedToolChoice(type="function", function=NamedFunction(name=choice.name))
    return choice


def _response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format``."""
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None:
        raise BadRequestError(
            "text.format of type json_schema needs a schema.", param="text.format.schema"
        )
    check_schema(fmt.schema_, "text.format.schema")
    schema = {"name": fmt.name or "output", "schema": fmt.schema_}
    return {"type": "json_schema", "json_schema": schema}
