"""OpenAI legacy completions protocol (``POST /v1/completions``): text prompts in, text out.

Images stay a chat feature, as in OpenAI's API: a prompt is a string or a list of strings (token
id prompts are refused by validation, naming ``prompt``).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from vlmserve.api.protocol import RequestModel, StreamOptions, Usage


class CompletionRequest(RequestModel):
    """``POST /v1/completions``."""

    model: StrictStr
    prompt: StrictStr | list[StrictStr] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: StrictInt = Field(default=1, ge=1, le=16)
    #: Only 1: the server returns every sequence it generates.
    best_of: Literal[1] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    #: How many most likely tokens to list at each position (0 to 5, as OpenAI allows).
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)
    echo: StrictBool = False
    user: StrictStr | None = None
    min_tokens: StrictInt = Field(default=0, ge=0)
    ignore_eos: StrictBool = False


class CompletionLogprobs(BaseModel):
    """Legacy logprobs: parallel lists, one entry per generated token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    """One generated text (``index`` runs over prompts, then over ``n``)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    """A completions answer, whole or one streamed chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


def completion_id() -> str:
    """A fresh ``cmpl-`` id."""
    return f"cmpl-{uuid.uuid4().hex}"


def legacy_logprobs(entries: list[Any], offset: int) -> CompletionLogprobs:
    """Engine logprobs (``TokenLogprob``) in the legacy form; offsets count from ``offset``."""
    out = CompletionLogprobs()
    for entry in entries:
        out.tokens.append(entry.token)
        out.token_logprobs.append(entry.logprob)
        out.top_logprobs.append(dict(entry.top))
        out.text_offset.append(offset)
        offset += len(entry.token)
    return out
