"""The chat-completions request path: validate, prepare, then stream or collect.

Handlers here see an engine and protocol objects, never HTTP. :meth:`ChatHandler.prepare`
validates the request, decodes its images and has the engine prepare it (render once, check the
limits the engine runs with, resolve ``max_tokens`` and sampling defaults); streaming and
non-streaming then share the prepared request. Both end by closing the engine's iterator, which
aborts the request in the engine if it was still running (the client went away, or the task was
cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vlmserve.api.errors import (
    APIError,
    InternalError,
    NotFoundError,
    RequestTimeoutError,
    as_api_error,
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
    Engine,
    EngineOutput,
    EngineRequest,
    ImageInput,
    PreparedRequest,
    SamplingOptions,
    TokenLogprob,
)
from vlmserve.engine.errors import EngineError
from vlmserve.engine.prepare import check_image_count
from vlmserve.images.decode import ImageLimits, load_image
from vlmserve.images.fetch import MediaFetcher, MediaPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: Called with the tokens (prompt plus completion) a request used, when it ends.
UsageSink = Callable[[int], None]


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
    def for_request(cls, request: PreparedRequest) -> _Tally:
        n = request.sampling.options.n
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

    async def prepare(self, body: ChatCompletionRequest, request_id: str) -> PreparedRequest:
        """Validate a request, decode its images, and have the engine render and check it."""
        if body.model != self.model_id:
            raise NotFoundError(
                f"The model '{body.model}' does not exist; this server serves '{self.model_id}'.",
                param="model",
                code="model_not_found",
            )
        messages, images = await self._messages(body.messages)
        request = EngineRequest(request_id, _sampling(body), messages=messages, images=images)
        return await self.engine.prepare(request)

    async def _messages(
        self, messages: list[ChatMessage]
    ) -> tuple[list[dict[str, Any]], list[ImageInput]]:
        """HF-style messages with image parts, and their images decoded concurrently.

        The image count is checked against the engine's limit before any image is fetched.
        """
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
        check_image_count(len(pending), self.engine.limits)
        decoded = await _gather_or_cancel(
            [load_image(url, param, self.limits, self.media) for url, _, param in pending]
        )
        self.metrics.images.inc(len(decoded))
        images = [
            ImageInput(image, detail, param)
            for image, (_, detail, param) in zip(decoded, pending, strict=True)
        ]
        return out, images

    async def complete(
        self, request: PreparedRequest, deadline: float, on_usage: UsageSink | None = None
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
        wants_logprobs = request.sampling.options.logprobs
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
        request: PreparedRequest,
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
        request: PreparedRequest,
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
                    for i in range(request.sampling.options.n)
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
        except EngineError as exc:
            yield _sse(as_api_error(exc).body())
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


def _sampling(body: ChatCompletionRequest) -> SamplingOptions:
    """The sampling options the client set; what it left unset the engine fills in."""
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return SamplingOptions(
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
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
