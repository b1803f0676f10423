"""A cached answer and how it is replayed: whole, or as a stream of server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from vlmserve.api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    DeltaMessage,
    Usage,
    completion_id,
    now,
)
from vlmserve.api.serving import sse


@dataclass
class CachedAnswer:
    """What a deterministic request produced: one choice, its finish reason, usage, model."""

    model: str
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int

    def encode(self) -> bytes:
        """Compact JSON, as stored."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> CachedAnswer:
        """The answer stored as :meth:`encode` wrote it."""
        return cls(**json.loads(data))

    @classmethod
    def of(cls, completion: dict[str, Any]) -> CachedAnswer | None:
        """The answer in an OpenAI chat completion dict; None when it is not one plain choice."""
        choices = completion.get("choices") or []
        usage = completion.get("usage") or {}
        if len(choices) != 1 or not isinstance(choices[0].get("message", {}).get("content"), str):
            return None
        if choices[0]["message"].get("tool_calls"):
            return None
        return cls(
            model=completion["model"],
            content=choices[0]["message"]["content"],
            finish_reason=choices[0].get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    def usage(self) -> Usage:
        """The token counts of the original run."""
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )

    def completion(self) -> ChatCompletion:
        """The answer as a fresh chat completion (new id and timestamp)."""
        choice = Choice(
            index=0,
            message=AssistantMessage(content=self.content),
            finish_reason=self.finish_reason,
        )
        return ChatCompletion(
            id=completion_id(),
            created=now(),
            model=self.model,
            choices=[choice],
            usage=self.usage(),
        )

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        """The answer as server-sent events: role, the whole text, finish, usage, ``[DONE]``."""
        ident, created = completion_id(), now()

        def chunk(delta: DeltaMessage | None, finish: str | None = None) -> str:
            choices = (
                [] if delta is None else [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
            )
            body = ChatCompletionChunk(id=ident, created=created, model=self.model, choices=choices)
            if delta is None:
                body.usage = self.usage()
            return sse(body.model_dump())

        yield chunk(DeltaMessage(role="assistant", content=""))
        yield chunk(DeltaMessage(content=self.content), self.finish_reason)
        if include_usage:
            yield chunk(None)
        yield "data: [DONE]\n\n"
