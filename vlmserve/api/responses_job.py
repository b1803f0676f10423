"""A prepared response and how its final form is written (shared by whole and streamed answers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmserve.api.chat import usage_of
from vlmserve.api.protocol_responses import (
    IncompleteDetails,
    NamedFunctionChoice,
    Response,
    ResponsesRequest,
    ResponseUsage,
)
from vlmserve.api.serving import Tally
from vlmserve.api.tools import ToolPlan
from vlmserve.engine.base import PreparedRequest


@dataclass
class ResponseJob:
    """A prepared response and what shapes it."""

    prepared: PreparedRequest
    plan: ToolPlan | None
    body: ResponsesRequest

    def snapshot(self, response_id: str, created: int) -> Response:
        """The response object before any output, echoing the request's settings."""
        body = self.body
        text_format: dict[str, Any] = {"type": "text"}
        if body.text and body.text.format:
            text_format = body.text.format.model_dump(by_alias=True, exclude_none=True)
        return Response(
            id=response_id,
            created_at=created,
            status="in_progress",
            model=body.model,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            text={"format": text_format},
            tools=[t.model_dump(exclude_none=True) for t in body.tools or []],
            tool_choice=body.tool_choice.model_dump()
            if isinstance(body.tool_choice, NamedFunctionChoice)
            else body.tool_choice or "auto",
            parallel_tool_calls=body.parallel_tool_calls,
            metadata=body.metadata or {},
        )


def finished(response: Response, tally: Tally) -> Response:
    """``response`` with its final status and usage."""
    response.usage = _usage(tally)
    if tally.reasons[0] == "length":
        response.status = "incomplete"
        response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
        for item in response.output:
            item.status = "incomplete"
    else:
        response.status = "completed"
    return response


def _usage(tally: Tally) -> ResponseUsage:
    usage = usage_of(tally)
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )
