"""The engine interface: everything the HTTP layer needs from an inference engine.

An engine takes an :class:`EngineRequest` (chat messages with their images already decoded, and
sampling options) and yields :class:`EngineOutput` deltas. The HTTP layer never sees torch or
vLLM. Closing the async iterator returned by :meth:`Engine.generate` (the client went away, the
task was cancelled) must abort the request inside the engine.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

Detail = Literal["low", "high", "auto"]
FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request generation knobs, already validated by the HTTP layer."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: dict[str, Any] | None = None


@dataclass
class ImageInput:
    """One decoded image and the detail level the client asked for."""

    image: Image.Image
    detail: Detail = "auto"


@dataclass
class EngineRequest:
    """One chat completion as the engine sees it.

    ``messages`` are in Hugging Face chat form: ``{"role", "content": [{"type": "text", "text"} |
    {"type": "image"}]}``, and ``images`` holds the images in the order their parts appear.
    """

    request_id: str
    messages: list[dict[str, Any]]
    images: list[ImageInput]
    sampling: SamplingOptions
    #: Scheduling priority: lower runs first. Interactive requests are 0; batch lines run above
    #: it so they only take what interactive work leaves (vLLM's priority scheduling, or the
    #: order the transformers engine admits waiting requests in).
    priority: int = 0


@dataclass
class TokenLogprob:
    """One generated token's log probability and the most likely tokens at its position."""

    token: str
    logprob: float
    #: ``(token, logprob)`` for the ``top_logprobs`` most likely tokens, most likely first.
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class ChoiceDelta:
    """New text for one choice, how many tokens it took, and why the choice ended (if it did)."""

    index: int
    text: str
    num_tokens: int
    finish_reason: FinishReason | None = None
    #: One entry per new token when the request asked for logprobs, else ``None``.
    logprobs: list[TokenLogprob] | None = None


@dataclass
class EngineOutput:
    """One step of a request's progress: the prompt size (with image tokens) and new text."""

    prompt_tokens: int
    deltas: list[ChoiceDelta] = field(default_factory=list)


@dataclass
class EngineStats:
    """Point-in-time engine state for /metrics and tests."""

    running: int
    waiting: int
    kv_cache_usage: float | None = None


class Engine(abc.ABC):
    """An inference engine serving one model."""

    #: Short engine name for logs and metrics ("transformers", "vllm").
    name: str = "engine"

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int:
        """Longest prompt plus output, in tokens, the engine accepts."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; called once before the first request."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop background work and release the model."""

    def check(self, request: EngineRequest) -> None:
        """Raise :class:`vlmserve.api.errors.BadRequestError` for what this engine cannot do.

        Called by the HTTP layer before :meth:`generate`, so a request the engine would reject
        gets a clear 400 and never reaches the engine. The default accepts everything.
        """
        return None

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        """Stream a request's outputs; closing the iterator early aborts the request."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop work for a request; unknown or finished ids are ignored."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """How many requests run and wait right now."""
