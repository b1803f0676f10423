"""The chat-completions request path: validate, build the engine request, then stream or collect.

Handlers here see an engine and protocol objects, never HTTP. Streaming and non-streaming share
:meth:`ChatHandler.build`; both end by closing the engine's iterator, which aborts the request in
the engine if it was still running (the client went away, or the task was cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from vlmserve.api.errors import (
    APIError,
    BadRequestError,
    InternalError,
    NotFoundError,
    RequestTimeoutError,
)
from vlmserve.api.metrics import Metrics
from vlmserve.api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ImagePart,
    Usage,
    completion_id,
    now,
)
from vlmserve.config import Settings
from vlmserve.engine.base import (
    Detail,
    Engine,
    EngineOutput,
    EngineRequest,
    ImageInput,
    SamplingOptions,
    TokenLogprob,
)
from vlmserve.images.decode import ImageLimits, load_image
from vlmserve.images.fetch import MediaFetcher, MediaPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: Called with the tokens (prompt plus completion) a request used, when it ends.
UsageSink = Callable[[int], None]


class ImageTokenRule(Protocol):
    """What :func:`check_image_tokens` needs from a model family."""

    def image_tokens(self, width: int, height: int, detail: Detail = "high") -> int:
        """Prompt tokens one image takes."""
        ...


def check_image_tokens(
    rule: ImageTokenRule, images: Sequence[ImageInput], params: Sequence[str], cap: int | None
) -> int:
    """The image tokens of ``images``; a 400 naming the image that goes over ``cap``."""
    counts = [rule.image_tokens(i.image.width, i.image.height, i.detail) for i in images]
    total = sum(counts)
    if cap is not None and total > cap:
        running = 0
        for count, param in zip(counts, params, strict=True):
            running += count
            if running > cap:
                raise BadRequestError(
                    f"The images in this request take {total} image tokens, more than the "
                    f"{cap}-token limit; send fewer or smaller images, or detail 'low'.",
                    param=param,
                    code="too_many_image_tokens",
                )
    return total


@contextlib.asynccontextmanager
async def deadline_scope(deadline: float) -> AsyncIterator[None]:
    """Run the block until the event-loop time ``deadline``; then cancel it with a 504."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        logger.warning("request timed out; its work was cancelled")
        raise RequestTimeoutError("The request took longer than this server allows.") from None


@dataclass
class _Tally:
    """What one request has produced so far."""

    texts: list[str]
    reasons: list[str | None]
    logprobs: list[list[dict[str, Any]]]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    def add(self, output: EngineOutput) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.prompt_tokens = output.prompt_tokens
        for delta in output.deltas:
            self.texts[delta.index] += delta.text
            self.logprobs[delta.index] += logprob_entries(delta.logprobs)
            self.completion_tokens += delta.num_tokens
            if delta.finish_reason:
                self.reasons[delta.index] = delta.finish_reason

    @classmethod
    def for_request(cls, request: EngineRequest) -> _Tally:
        n = request.sampling.n
        return cls([""] * n, [None] * n, [[] for _ in range(n)])

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
        )


class ChatHandler:
    """Serves ``/v1/chat/completions`` for one model on one engine."""

    def __init__(self, engine: Engine, settings: Settings, model_id: str, metrics: Metrics):
        self.engine = engine
        self.settings = settings
        self.model_id = model_id
        self.metrics = metrics
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.media = MediaFetcher(MediaPolicy.from_settings(settings))

    async def build(self, body: ChatCompletionRequest, request_id: str) -> EngineRequest:
        """Validate a request and turn it into the engine's request (images decoded)."""
        if body.model != self.model_id:
            raise NotFoundError(
                f"The model '{body.model}' does not exist; this server serves '{self.model_id}'.",
                param="model",
                code="model_not_found",
            )
        messages, images, params = await self._messages(body.messages)
        rule = getattr(self.engine, "family", None)
        if rule is not None:
            cap = self.settings.max_image_tokens_per_request
            check_image_tokens(rule, images, params, cap)
        request = EngineRequest(request_id, messages, images, self._sampling(body))
        self.engine.check(request)
        return request

    async def _messages(
        self, messages: list[ChatMessage]
    ) -> tuple[list[dict[str, Any]], list[ImageInput], list[str]]:
        """HF-style messages with image parts, the images decoded concurrently, their params."""
        out: list[dict[str, Any]] = []
        pending = []
        for i, message in enumerate(messages):
            content = message.content if message.content is not None else ""
            parts: list[dict[str, Any]] = []
            for j, part in enumerate([content] if isinstance(content, str) else content):
                if isinstance(part, str):
                    parts.append({"type": "text", "text": part})
                elif isinstance(part, ImagePart):
                    param = f"messages[{i}].content[{j}].image_url"
                    detail = part.image_url.detail or self.settings.default_image_detail
                    pending.append((part.image_url.url, detail, param))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part.text})
            role = "system" if message.role == "developer" else message.role
            out.append({"role": role, "content": parts})
        if len(pending) > self.settings.max_images_per_request:
            raise BadRequestError(
                f"A request may carry at most {self.settings.max_images_per_request} images; "
                f"this one has {len(pending)}.",
                param="messages",
                code="too_many_images",
            )
        decoded = await _gather_or_cancel(
            [load_image(url, param, self.limits, self.media) for url, _, param in pending]
        )
        self.metrics.images.inc(len(decoded))
        images = [ImageInput(img, d) for img, (_, d, _) in zip(decoded, pending, strict=True)]
        return out, images, [param for _, _, param in pending]

    def _sampling(self, body: ChatCompletionRequest) -> SamplingOptions:
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        return SamplingOptions(
            max_tokens=body.max_completion_tokens
            or body.max_tokens
            or self.settings.default_max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            n=body.n,
            stop=stop,
            min_tokens=body.min_tokens,
            ignore_eos=body.ignore_eos,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logprobs=body.logprobs,
            top_logprobs=body.top_logprobs or 0,
            response_format=body.response_format.model_dump(by_alias=True)
            if body.response_format
            else None,
        )

    async def complete(
        self, request: EngineRequest, deadline: float, on_usage: UsageSink | None = None
    ) -> ChatCompletion:
        """Run a request to the end (or a 504 at ``deadline``) and answer it whole."""
        tally = _Tally.for_request(request)
        outputs = self.engine.generate(request)
        try:
            async with deadline_scope(deadline):
                async for output in outputs:
                    tally.add(output)
        finally:
            await outputs.aclose()
            if on_usage is not None:
                on_usage(tally.total_tokens)
        self._record(tally)
        wants_logprobs = request.sampling.logprobs
        choices = [
            Choice(
                index=i,
                message=AssistantMessage(content=text),
                finish_reason=reason,
                logprobs={"content": tally.logprobs[i]} if wants_logprobs else None,
            )
            for i, (text, reason) in enumerate(zip(tally.texts, tally.reasons, strict=True))
        ]
        return ChatCompletion(
            id=completion_id(),
            created=now(),
            model=self.model_id,
            choices=choices,
            usage=tally.usage(),
        )

    async def open_stream(
        self,
        request: EngineRequest,
        include_usage: bool,
        deadline: float,
        on_usage: UsageSink | None = None,
    ) -> AsyncIterator[str]:
        """Start a request and wait for its first output, so early errors are plain HTTP errors.

        Returns the server-sent events; closing them aborts the request. Past ``deadline`` the
        stream ends with a timeout error event.
        """
        outputs = self.engine.generate(request)
        try:
            async with deadline_scope(deadline):
                first = await anext(outputs)
        except BaseException:
            await outputs.aclose()
            raise
        return self._events(request, first, outputs, include_usage, deadline, on_usage)

    async def _events(
        self,
        request: EngineRequest,
        first: EngineOutput,
        outputs: AsyncGenerator[EngineOutput, None],
        include_usage: bool,
        deadline: float,
        on_usage: UsageSink | None,
    ) -> AsyncIterator[str]:
        tally = _Tally.for_request(request)
        chunk = _ChunkWriter(completion_id(), now(), self.model_id)
        try:
            yield chunk.choices(
                [
                    ChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))
                    for i in range(request.sampling.n)
                ]
            )
            output: EngineOutput | None = first
            while output is not None:
                tally.add(output)
                deltas = [d for d in output.deltas if d.text or d.finish_reason or d.logprobs]
                if deltas:
                    yield chunk.choices(
                        [
                            ChunkChoice(
                                index=d.index,
                                delta=DeltaMessage(content=d.text or None),
                                finish_reason=d.finish_reason,
                                logprobs=None
                                if d.logprobs is None
                                else {"content": logprob_entries(d.logprobs)},
                            )
                            for d in deltas
                        ]
                    )
                async with deadline_scope(deadline):
                    output = await anext(outputs, None)
            self._record(tally)
            if include_usage:
                yield chunk.usage(tally.usage())
        except APIError as exc:
            yield _sse(exc.body())
        except Exception:
            logger.exception("stream failed")
            yield _sse(InternalError("The server had an error while streaming.").body())
        finally:
            await outputs.aclose()
            if on_usage is not None:
                on_usage(tally.total_tokens)
        yield "data: [DONE]\n\n"

    def _record(self, tally: _Tally) -> None:
        self.metrics.latency.observe(time.perf_counter() - tally.started)
        if tally.first_token_at is not None:
            self.metrics.ttft.observe(tally.first_token_at - tally.started)
        self.metrics.prompt_tokens.inc(tally.prompt_tokens)
        self.metrics.generation_tokens.inc(tally.completion_tokens)


@dataclass
class _ChunkWriter:
    """Formats the chunks of one stream, which share an id, a timestamp and a model."""

    id: str
    created: int
    model: str

    def choices(self, choices: list[ChunkChoice]) -> str:
        return _sse(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=choices
            ).model_dump(exclude_none=False)
        )

    def usage(self, usage: Usage) -> str:
        return _sse(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=[], usage=usage
            ).model_dump()
        )


async def _gather_or_cancel(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` together; when one fails, cancel the others (a slow fetch among them)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def logprob_entries(entries: list[TokenLogprob] | None) -> list[dict[str, Any]]:
    """Engine logprobs in OpenAI's ``logprobs.content`` form."""

    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return [
        {**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
        for e in entries or []
    ]


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
