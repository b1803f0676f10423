"""The chat-completions request path: validate, build the engine request, then stream or collect.

Handlers here see an engine and protocol objects, never HTTP. Streaming and non-streaming share
:meth:`ChatHandler.build`; both end by closing the engine's iterator, which aborts the request in
the engine if it was still running (the client went away, or the task was cancelled).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.config import Settings
from server.engine.base import Engine, EngineOutput, EngineRequest, ImageInput, SamplingOptions
from server.errors import APIError, BadRequestError, InternalError, NotFoundError
from server.images import ImageLimits, load_image
from server.metrics import Metrics
from server.protocol import (
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

logger = logging.getLogger(__name__)


@dataclass
class _Tally:
    """What one request has produced so far."""

    texts: list[str]
    reasons: list[str | None]
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
            self.completion_tokens += delta.num_tokens
            if delta.finish_reason:
                self.reasons[delta.index] = delta.finish_reason

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

    async def build(self, body: ChatCompletionRequest, request_id: str) -> EngineRequest:
        """Validate a request and turn it into the engine's request (images decoded)."""
        if body.model != self.model_id:
            raise NotFoundError(
                f"The model '{body.model}' does not exist; this server serves '{self.model_id}'.",
                param="model",
                code="model_not_found",
            )
        messages, images = await self._messages(body.messages)
        request = EngineRequest(request_id, messages, images, self._sampling(body))
        self.engine.check(request)
        return request

    async def _messages(
        self, messages: list[ChatMessage]
    ) -> tuple[list[dict[str, Any]], list[ImageInput]]:
        """HF-style messages with image parts, and the images decoded concurrently."""
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
                    pending.append((load_image(part.image_url.url, param, self.limits), detail))
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
        decoded = await asyncio.gather(*(coro for coro, _ in pending))
        self.metrics.images.inc(len(decoded))
        return out, [ImageInput(img, d) for img, (_, d) in zip(decoded, pending, strict=True)]

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
            response_format=body.response_format.model_dump() if body.response_format else None,
        )

    async def complete(self, request: EngineRequest) -> ChatCompletion:
        """Run a request to the end and answer it whole."""
        tally = _Tally([""] * request.sampling.n, [None] * request.sampling.n)
        async for output in self.engine.generate(request):
            tally.add(output)
        self._record(tally)
        choices = [
            Choice(index=i, message=AssistantMessage(content=text), finish_reason=reason)
            for i, (text, reason) in enumerate(zip(tally.texts, tally.reasons, strict=True))
        ]
        return ChatCompletion(
            id=completion_id(),
            created=now(),
            model=self.model_id,
            choices=choices,
            usage=tally.usage(),
        )

    async def open_stream(self, request: EngineRequest, include_usage: bool) -> AsyncIterator[str]:
        """Start a request and wait for its first output, so early errors are plain HTTP errors.

        Returns the server-sent events; closing them aborts the request.
        """
        outputs = aiter(self.engine.generate(request))
        try:
            first = await anext(outputs)
        except BaseException:
            await outputs.aclose()
            raise
        return self._events(request, first, outputs, include_usage)

    async def _events(
        self,
        request: EngineRequest,
        first: EngineOutput,
        outputs: AsyncIterator[EngineOutput],
        include_usage: bool,
    ) -> AsyncIterator[str]:
        tally = _Tally([""] * request.sampling.n, [None] * request.sampling.n)
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
                deltas = [d for d in output.deltas if d.text or d.finish_reason]
                if deltas:
                    yield chunk.choices(
                        [
                            ChunkChoice(
                                index=d.index,
                                delta=DeltaMessage(content=d.text or None),
                                finish_reason=d.finish_reason,
                            )
                            for d in deltas
                        ]
                    )
                output = await anext(outputs, None)
            self._record(tally)
            if include_usage:
                yield chunk.usage(tally.usage())
        except APIError as exc:
            yield _sse(exc.body())
        except Exception:
            logger.exception("stream failed for %s", request.request_id)
            yield _sse(InternalError("The server had an error while streaming.").body())
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]
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


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
