"""The Responses API's streamed events for one response.

The order is the API's: ``response.created`` and ``response.in_progress``; for the message,
``output_item.added``, ``content_part.added``, ``output_text.delta``..., ``output_text.done``,
``content_part.done``, ``output_item.done``; for each function call, ``output_item.added``,
``function_call_arguments.delta``..., ``function_call_arguments.done``, ``output_item.done``;
and last ``response.completed`` (or ``response.incomplete``) with the whole response. Every event
carries a ``sequence_number`` counting from 0.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from vlmserve.api.protocol import DeltaToolCall, now
from vlmserve.api.protocol_responses import (
    OutputFunctionCall,
    OutputMessage,
    OutputText,
    Response,
    new_id,
)
from vlmserve.api.responses_job import ResponseJob, finished
from vlmserve.api.serving import Generation, sse
from vlmserve.api.tools import ToolStream


@dataclass
class _Writer:
    """Numbers and formats the events of one response."""

    response: Response
    sequence: int = 0
    message: OutputMessage | None = None
    calls: dict[int, OutputFunctionCall] = field(default_factory=dict)

    def event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse(payload, kind)

    def lifecycle(self, kind: str) -> str:
        return self.event(kind, response=self.response.model_dump())

    def text(self, delta: str) -> list[str]:
        """Events for new message text (opening the message item first)."""
        out = []
        if self.message is None:
            self.message = OutputMessage(id=new_id("msg"), status="in_progress", content=[])
            self.response.output.append(self.message)
            out.append(self._item("response.output_item.added", self.message))
            part = OutputText(text="")
            out.append(self._part("response.content_part.added", part))
            self.message.content.append(part)
        self.message.content[0].text += delta
        out.append(self._in_text("response.output_text.delta", delta=delta, logprobs=[]))
        return out

    def tool_delta(self, delta: DeltaToolCall) -> list[str]:
        """Events for a piece of a function call (opening its item first)."""
        out = []
        call = self.calls.get(delta.index)
        if call is None:
            call = OutputFunctionCall(
                id=new_id("fc"),
                call_id=delta.id or new_id("call"),
                name=delta.function.name or "",
                arguments="",
                status="in_progress",
            )
            self.calls[delta.index] = call
            self.response.output.append(call)
            out.append(self._item("response.output_item.added", call))
        if delta.function.arguments:
            call.arguments += delta.function.arguments
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=call.id,
                    output_index=self.response.output.index(call),
                    delta=delta.function.arguments,
                )
            )
        return out

    def close_items(self, status: str) -> list[str]:
        """The ``done`` events of every open item."""
        out = []
        if self.message is not None:
            self.message.status = status  # type: ignore[assignment]
            part = self.message.content[0]
            out.append(self._in_text("response.output_text.done", text=part.text, logprobs=[]))
            out.append(self._part("response.content_part.done", part))
            out.append(self._item("response.output_item.done", self.message))
        for call in self.calls.values():
            call.status = status  # type: ignore[assignment]
            index = self.response.output.index(call)
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=call.id,
                    output_index=index,
                    name=call.name,
                    arguments=call.arguments,
                )
            )
            out.append(self._item("response.output_item.done", call))
        return out

    def _item(self, kind: str, item: OutputMessage | OutputFunctionCall) -> str:
        index = self.response.output.index(item)
        return self.event(kind, output_index=index, item=item.model_dump())

    def _part(self, kind: str, part: OutputText) -> str:
        assert self.message is not None
        return self.event(
            kind,
            item_id=self.message.id,
            output_index=self.response.output.index(self.message),
            content_index=0,
            part=part.model_dump(),
        )

    def _in_text(self, kind: str, **fields: Any) -> str:
        assert self.message is not None
        return self.event(
            kind,
            item_id=self.message.id,
            output_index=self.response.output.index(self.message),
            content_index=0,
            **fields,
        )


async def events(job: ResponseJob, generation: Generation) -> AsyncGenerator[str, None]:
    """Every event of one streamed response; closing it aborts the request."""
    writer = _Writer(job.snapshot(new_id("resp"), now()))
    tools = ToolStream(job.plan) if job.plan else None
    try:
        yield writer.lifecycle("response.created")
        yield writer.lifecycle("response.in_progress")
        async for output in generation.outputs():
            for delta in output.deltas:
                text: str = delta.text
                calls: list[DeltaToolCall] = []
                if tools is not None:
                    text, calls = tools.feed(delta.text)
                    if delta.finish_reason:
                        tail, more = tools.finish()
                        text, calls = text + tail, calls + more
                for event in writer.text(text) if text else []:
                    yield event
                for call in calls:
                    for event in writer.tool_delta(call):
                        yield event
        response = finished(writer.response, generation.tally)
        for event in writer.close_items(response.status):
            yield event
        done = "response.incomplete" if response.status == "incomplete" else "response.completed"
        yield writer.lifecycle(done)
    finally:
        await generation.close()
