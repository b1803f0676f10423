"""Tool calling: what the model sees, what the grammar enforces, and how its output is read back.

The families' chat templates know nothing of tools, so vlmserve writes them into the prompt in
one documented format (Hermes style, which many open checkpoints are trained on): the tools'
JSON schemas in a system message between ``<tools>`` tags, earlier calls as
``<tool_call>{"name", "arguments"}</tool_call>`` in the assistant's text, and tool results as
``<tool_response>`` user turns. ``tool_choice`` then decides the output:

- ``none``: no tools in the prompt, plain text out.
- ``auto``: the model may answer text or ``<tool_call>`` blocks; blocks naming a known function
  with JSON arguments become ``tool_calls``, anything else stays text.
- ``required``: the grammar forces a JSON array of ``{"name", "arguments"}`` objects, each
  matching one function's schema (one element when ``parallel_tool_calls`` is false).
- a named function: the grammar forces that function's arguments object.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from vlmserve.api.errors import BadRequestError
from vlmserve.api.protocol import (
    ChatMessage,
    DeltaFunctionCall,
    DeltaToolCall,
    FunctionCall,
    NamedToolChoice,
    ToolCall,
    ToolChoice,
    ToolDefinition,
)
from vlmserve.engine.grammar import check_schema

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CLOSE) + r"|$)", re.DOTALL)
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def call_id() -> str:
    """A fresh tool-call id."""
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolPlan:
    """The tools of one request and what ``tool_choice`` makes of them."""

    tools: list[ToolDefinition]
    #: "none", "auto", "required", or the name of the one function the model must call.
    choice: str
    parallel: bool = True
    named: bool = False

    @property
    def in_prompt(self) -> bool:
        """Whether the tools are shown to the model at all."""
        return self.choice != "none"

    def parameters(self, name: str) -> dict[str, Any]:
        """The JSON schema of one function's arguments."""
        tool = next(t for t in self.tools if t.function.name == name)
        return tool.function.parameters or _EMPTY_PARAMETERS

    def response_format(self) -> dict[str, Any] | None:
        """The grammar ``required`` or a named function imposes, as a ``response_format``."""
        if self.named:
            schema = self.parameters(self.choice)
        elif self.choice == "required":
            schema = self._calls_schema()
        else:
            return None
        return {"type": "json_schema", "json_schema": {"name": "tool_calls", "schema": schema}}

    def _calls_schema(self) -> dict[str, Any]:
        """An array of calls, each naming a function and matching its schema; ``$defs`` hoisted."""
        defs: dict[str, Any] = {}
        options = []
        for i, tool in enumerate(self.tools):
            params = dict(tool.function.parameters or _EMPTY_PARAMETERS)
            for key, value in params.pop("$defs", {}).items():
                if defs.setdefault(key, value) != value:
                    raise BadRequestError(
                        f"Two tools define '$defs/{key}' differently; rename one of them.",
                        param=f"tools[{i}].function.parameters",
                    )
            options.append(
                {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "enum": [tool.function.name]},
                        "arguments": params,
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
            )
        schema: dict[str, Any] = {"type": "array", "items": {"anyOf": options}, "minItems": 1}
        if not self.parallel:
            schema["maxItems"] = 1
        if defs:
            schema["$defs"] = defs
        return schema

    def prompt(self) -> str:
        """The system text that shows the model its tools and the call format."""
        signatures = "\n".join(
            json.dumps(t.function.model_dump(exclude_none=True, exclude={"strict"}))
            for t in self.tools
        )
        return (
            "# Tools\n\nYou can call the functions below. Their signatures, as JSON Schema, "
            f"are listed between <tools> and </tools>:\n<tools>\n{signatures}\n</tools>\n\n"
            "To call a function, answer with one JSON object per call, with the keys "
            f'"name" and "arguments", each between {OPEN} and {CLOSE}:\n'
            f'{OPEN}\n{{"name": "<function name>", "arguments": {{...}}}}\n{CLOSE}'
        )

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The content and the tool calls in one choice's finished output."""
        if self.choice == "none":
            return text, []
        if self.named:
            return None, [_call(self.choice, text)]
        if self.choice == "required":
            calls = _parse_array(text)
            return (None, calls) if calls else (text, [])
        return self._parse_blocks(text)

    def _parse_blocks(self, text: str) -> tuple[str | None, list[ToolCall]]:
        names = {t.function.name for t in self.tools}
        calls = []
        for match in _BLOCK.finditer(text):
            call = _call_from_object(match.group(1))
            if call is None or call.function.name not in names:
                return text, []
            calls.append(call)
        if not calls:
            return text, []
        content = _BLOCK.sub("", text).strip() or None
        return content, calls if self.parallel else calls[:1]


def plan_tools(
    tools: list[ToolDefinition] | None,
    tool_choice: ToolChoice | None,
    parallel: bool,
    has_response_format: bool,
) -> ToolPlan | None:
    """Check ``tools`` and ``tool_choice`` together; None when the request has no tools."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise BadRequestError(
                "tool_choice needs tools: this request has none.", param="tool_choice"
            )
        return None
    names = [t.function.name for t in tools]
    for i, tool in enumerate(tools):
        if names.index(tool.function.name) != i:
            raise BadRequestError(
                f"Two tools are named '{tool.function.name}'.", param=f"tools[{i}].function.name"
            )
        if tool.function.parameters is not None:
            check_schema(tool.function.parameters, f"tools[{i}].function.parameters")
    choice = tool_choice or "auto"
    named = isinstance(choice, NamedToolChoice)
    name = choice.function.name if isinstance(choice, NamedToolChoice) else choice
    if named and name not in names:
        raise BadRequestError(
            f"tool_choice names '{name}', which is not among the tools.", param="tool_choice"
        )
    if has_response_format and (named or name == "required"):
        raise BadRequestError(
            "A forced tool call cannot also follow response_format; drop one of them.",
            param="tool_choice",
        )
    return ToolPlan(list(tools), name, parallel, named)


def message_text(message: ChatMessage, index: int, known_ids: set[str]) -> str | None:
    """The text a tool result or an assistant's tool calls add to the prompt (None: neither)."""
    if message.role == "tool":
        if not message.tool_call_id:
            raise BadRequestError(
                "A tool message needs the tool_call_id it answers.",
                param=f"messages[{index}].tool_call_id",
            )
        if message.tool_call_id not in known_ids:
            raise BadRequestError(
                f"tool_call_id '{message.tool_call_id}' answers no earlier assistant tool call.",
                param=f"messages[{index}].tool_call_id",
            )
        return None
    if message.tool_call_id is not None:
        raise BadRequestError(
            "Only tool messages carry a tool_call_id.", param=f"messages[{index}].tool_call_id"
        )
    if not message.tool_calls:
        return None
    if message.role != "assistant":
        raise BadRequestError(
            "Only assistant messages carry tool_calls.", param=f"messages[{index}].tool_calls"
        )
    blocks = []
    for j, call in enumerate(message.tool_calls):
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError as exc:
            raise BadRequestError(
                "Tool call arguments must be a JSON string.",
                param=f"messages[{index}].tool_calls[{j}].function.arguments",
            ) from exc
        known_ids.add(call.id)
        body = json.dumps({"name": call.function.name, "arguments": arguments})
        blocks.append(f"{OPEN}\n{body}\n{CLOSE}")
    return "\n".join(blocks)


def wrap_tool_result(text: str) -> str:
    """A tool's result as the model reads it."""
    return f"<tool_response>\n{text}\n</tool_response>"


def _call(name: str, arguments: str) -> ToolCall:
    return ToolCall(id=call_id(), function=FunctionCall(name=name, arguments=arguments))


def _call_from_object(text: str) -> ToolCall | None:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(arguments, dict):
        return None
    return _call(obj["name"], json.dumps(arguments))


def _parse_array(text: str) -> list[ToolCall]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return []
    if not isinstance(items, list):
        return []
    calls = [_call_from_object(json.dumps(item)) for item in items]
    return [c for c in calls if c is not None] if all(calls) else []


@dataclass
class ToolStream:
    """One choice's streamed output, split into content deltas and tool-call deltas.

    A named function streams its arguments as they come. ``required`` output is a JSON array,
    and ``auto`` output from the first ``<tool_call>`` on, is held until the choice ends and
    then sent as whole calls; text before it streams as content.
    """

    plan: ToolPlan
    held: str = ""
    holding: bool = False
    calls: int = 0
    header_sent: bool = False
    sent: list[ToolCall] = field(default_factory=list)

    def feed(self, text: str) -> tuple[str, list[DeltaToolCall]]:
        """New output text in; (content to send, tool-call deltas to send) out."""
        if self.plan.choice == "none":
            return text, []
        if self.plan.named:
            deltas = []
            if not self.header_sent:
                self.header_sent = True
                deltas.append(self._header(_call(self.plan.choice, "")))
            if text:
                deltas.append(DeltaToolCall(index=0, function=DeltaFunctionCall(arguments=text)))
            return "", deltas
        if self.plan.choice == "required" or self.holding:
            self.held += text
            return "", []
        self.held += text
        start = self.held.find(OPEN)
        if start >= 0:
            content, self.held, self.holding = self.held[:start], self.held[start:], True
            return content, []
        keep = _partial_tag(self.held)
        content, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return content, []

    def finish(self) -> tuple[str, list[DeltaToolCall]]:
        """The choice ended: what was held, as content or as whole tool calls."""
        if self.plan.named or self.plan.choice == "none":
            return "", []
        held, self.held = self.held, ""
        content, calls = self.plan.parse(held)
        self.sent = calls
        deltas = [self._header(call) for call in calls]
        return content or "", deltas

    @property
    def called(self) -> bool:
        """Whether this choice produced tool calls."""
        return self.plan.named or bool(self.sent)

    def _header(self, call: ToolCall) -> DeltaToolCall:
        index, self.calls = self.calls, self.calls + 1
        return DeltaToolCall(
            index=index,
            id=call.id,
            type="function",
            function=DeltaFunctionCall(name=call.function.name, arguments=call.function.arguments),
        )


def _partial_tag(text: str) -> int:
    """How many trailing characters of ``text`` could be the start of ``<tool_call>``."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if text.endswith(OPEN[:size]):
            return size
    return 0
