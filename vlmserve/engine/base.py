"""The engine interface: everything the HTTP layer needs from an inference engine.

Every endpoint goes through the same two steps. :meth:`Engine.prepare` takes an
:class:`EngineRequest` (chat messages or a plain prompt, with images already decoded, and the
sampling options the client set), renders and tokenizes it once, checks it against the limits the
engine runs with, and resolves the sampling options (``max_tokens`` capped by the context,
unset knobs from the checkpoint's ``generation_config.json``). :meth:`Engine.generate` then streams
the :class:`PreparedRequest`'s :class:`EngineOutput` deltas. The HTTP layer never sees torch or
vLLM, and engines raise only :mod:`vlmserve.engine.errors`. Closing the async iterator returned by
:meth:`Engine.generate` (the client went away, the task was cancelled) must abort the request
inside the engine.
"""

from __future__ import annotations

import abc
import bisect
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from vlmserve.images.detail import Detail

if TYPE_CHECKING:
    from vlmserve.config import Settings
    from vlmserve.models.base import ModelFamily

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request generation knobs as the client set them; ``None`` falls back when prepared."""

    #: ``None``: the server's default, capped by what the context leaves after the prompt.
    max_tokens: int | None = None
    #: ``None``: the checkpoint's ``generation_config.json``, else OpenAI's default.
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
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


#: The knobs :class:`SamplingDefaults` fills, as ``generation_config.json`` names them.
DEFAULTED_KNOBS = ("temperature", "top_p", "top_k", "repetition_penalty")


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that leaves a knob unset gets: the checkpoint's value, else OpenAI's."""

    temperature: float = 1.0
    top_p: float = 1.0
    #: 0 (or -1, as vLLM writes it): no top-k cut.
    top_k: int = 0
    repetition_penalty: float = 1.0

    @classmethod
    def from_generation_config(cls, config: Mapping[str, Any]) -> SamplingDefaults:
        """The defaults a checkpoint's generation config sets (other keys are ignored)."""
        given = {k: config[k] for k in DEFAULTED_KNOBS if config.get(k) is not None}
        return cls(**given)


@dataclass(frozen=True)
class Sampling:
    """A request's sampling as the engine runs it: every fallback resolved."""

    options: SamplingOptions
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float


@dataclass
class ImageInput:
    """One decoded image, the detail level the client asked for, and where it was in the request.

    ``param`` names the image in errors (``messages[0].content[1].image_url``).
    """

    image: Image.Image
    detail: Detail = "auto"
    param: str = "messages"


@dataclass
class EngineRequest:
    """One generation request as the engine sees it: chat ``messages`` or a plain ``prompt``.

    ``messages`` are in Hugging Face chat form: ``{"role", "content": [{"type": "text", "text"} |
    {"type": "image"}]}``; a ``prompt`` is used as it is (no chat template). ``images`` holds the
    images in the order their parts (or placeholders) appear.
    """

    request_id: str
    sampling: SamplingOptions
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    images: list[ImageInput] = field(default_factory=list)
    #: Scheduling priority: lower runs first. Interactive requests are 0; batch lines run above
    #: it so they only take what interactive work leaves (vLLM's priority scheduling, or the
    #: order the transformers engine admits waiting requests in).
    priority: int = 0

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("an engine request has either messages or a prompt")

    @property
    def input_param(self) -> str:
        """The request field holding the input, for errors: ``messages`` or ``prompt``."""
        return "messages" if self.messages is not None else "prompt"


@dataclass(frozen=True)
class RequestLimits:
    """The limits an engine enforces on every request, set from the settings it runs with."""

    max_images: int = 8
    max_image_tokens: int | None = None
    default_max_tokens: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        """The limits ``settings`` ask for (an engine may lower ``max_images`` further)."""
        return cls(
            settings.max_images_per_request,
            settings.max_image_tokens_per_request,
            settings.default_max_tokens,
        )


@dataclass
class PreparedRequest:
    """A request rendered, checked and resolved; what :meth:`Engine.generate` takes.

    ``inputs`` is the engine's own rendered form (token ids with image data), built once.
    """

    request: EngineRequest
    sampling: Sampling
    prompt_tokens: int
    #: Prompt positions that hold image features, counted in the rendered prompt.
    image_tokens: int
    inputs: Any

    @property
    def request_id(self) -> str:
        """The id the engine tracks (and aborts) the request by."""
        return self.request.request_id

    @property
    def priority(self) -> int:
        """The request's scheduling priority (lower runs first)."""
        return self.request.priority


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


class StepSizes:
    """How many requests each engine step decoded together: continuous batching's occupancy.

    A cumulative histogram read at scrape time, so a test or a dashboard sees every step, not
    only the steps that happened to be running when it looked. Bucket bounds are powers of two.
    """

    BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS) + 1)
        self.total = 0

    def observe(self, requests: int) -> None:
        """Count one step that decoded ``requests`` requests (idle steps are not counted)."""
        if requests <= 0:
            return
        self.counts[bisect.bisect_left(self.BOUNDS, requests)] += 1
        self.total += requests

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, steps)`` pairs in Prometheus order, ending with ``+Inf``."""
        pairs, seen = [], 0
        bounds = (*(str(float(b)) for b in self.BOUNDS), "+Inf")
        for bound, count in zip(bounds, self.counts, strict=True):
            seen += count
            pairs.append((bound, seen))
        return pairs


@dataclass
class EngineStats:
    """Point-in-time engine state for /metrics and tests."""

    running: int
    waiting: int
    kv_cache_usage: float | None = None
    step_sizes: StepSizes | None = None


class Engine(abc.ABC):
    """An inference engine serving one model."""

    #: Short engine name for logs and metrics ("transformers", "vllm").
    name: str = "engine"
    #: The limits this engine enforces in :meth:`prepare`; the HTTP layer reads ``max_images``
    #: to refuse a request before fetching its images.
    limits: RequestLimits = RequestLimits()
    #: The model family served: its image geometry bounds what the HTTP layer lets through.
    family: ModelFamily | None = None

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

    @abc.abstractmethod
    async def prepare(self, request: EngineRequest) -> PreparedRequest:
        """Render and tokenize ``request`` once, check it, resolve its sampling options.

        Raises :class:`vlmserve.engine.errors.RequestRejected` for anything the engine would
        refuse, so such a request never reaches :meth:`generate`.
        """

    @abc.abstractmethod
    def generate(self, request: PreparedRequest) -> AsyncGenerator[EngineOutput, None]:
        """Stream a prepared request's outputs; closing the iterator early aborts the request."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop work for a request; unknown or finished ids are ignored."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """How many requests run and wait right now."""
