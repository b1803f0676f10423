"""The chat-completions endpoint's edges: messages in, chat completions and chunks out.

:meth:`ChatHandler.prepare` validates a request, lowers its tools into the messages
(:mod:`vlmserve.api.tools`), decodes its images and has the engine prepare it; the shared
:class:`vlmserve.api.serving.Generation` then runs it, and this module writes the answer, with
tool calls read back from the output. :class:`MessageReader` is shared with ``/v1/responses``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from vlmserve.api.errors import NotFoundError
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
    DeltaToolCall,
    ImagePart,
    Usage,
    completion_id,
    now,
)
from vlmserve.api.serving import (
    Generation,
    Tally,
    UsageSink,
    guarded,
    sse,
    with_done,
)
from vlmserve.api.tools import ToolPlan, ToolStream, message_text, plan_tools, wrap_tool_result
from vlmserve.config import Settings
from vlmserve.engine.base import (
    Engine,
    EngineRequest,
    ImageInput,
    PreparedRequest,
    SamplingOptions,
    TokenLogprob,
)
from vlmserve.engine.prepare import check_image_count
from vlmserve.images.codec import ImageLimits
from vlmserve.images.fetch import MediaFetcher, MediaPolicy
from vlmserve.images.pipeline import ImagePipeline, ImageRef

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"


def check_model(model: str, served: str) -> None:
    """A 404 naming ``model`` unless it is the model this server serves."""
    if model != served:
        raise NotFoundError(
            f"The model '{model}' does not exist; this server serves '{served}'.",
            param="model",
            code="model_not_found",
        )


class MessageReader:
    """Turns protocol messages into the engine's chat messages, images decoded concurrently."""

    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.images = ImagePipeline(
            ImageLimits.from_settings(settings),
            MediaFetcher(MediaPolicy.from_settings(settings)),
            engine.family,
            metrics,
            workers=settings.image_workers,
            downscale=settings.image_downscale,
            cache_bytes=settings.image_cache_bytes,
        )

    async def read(
        self, messages: list[ChatMessage], plan: ToolPlan | None, field: str = "messages"
    ) -> tuple[list[dict[str, Any]], list[ImageInput]]:
        """HF-style messages (tools lowered into text) and their decoded images.

        ``field`` names the request field in errors. The image count is checked against the
        engine's limit before any image is fetched.
        """
        out: list[dict[str, Any]] = []
        pending: list[ImageRef] = []
        call_ids: set[str] = set()
        for i, message in enumerate(messages):
            content = message.content if message.content is not None else ""
            parts: list[dict[str, Any]] = []
            for j, part in enumerate([content] if isinstance(content, str) else content):
                if isinstance(part, str):
                    parts.append({"type": "text", "text": part})
                elif isinstance(part, ImagePart):
                    param = f"{field}[{i}].content[{j}].image_url"
                    detail = part.image_url.detail or self.settings.default_image_detail
                    pending.append(ImageRef(part.image_url.url, detail, param))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part.text})
            out.append(_lowered(message, parts, message_text(message, i, call_ids)))
        if plan is not None and plan.in_prompt:
            add_system_text(out, plan.prompt())
        check_image_count(len(pending), self.engine.limits)
        decoded = await self.images.load(pending)
        self.metrics.images.inc(len(decoded))
        images = [
            ImageInput(image, ref.detail, ref.param)
            for image, ref in zip(decoded, pending, strict=True)
        ]
        return out, images


def _lowered(message: ChatMessage, parts: list[dict[str, Any]], calls: str | None) -> dict:
    """One message in HF form: tool results become user turns, tool calls assistant text."""
    if message.role == "tool":
        text = "".join(p.get("text", "") for p in parts)
        return {"role": "user", "content": [{"type": "text", "text": wrap_tool_result(text)}]}
    if calls:
        parts = [*parts, {"type": "text", "text": ("\n" if parts else "") + calls}]
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": parts}


def add_system_text(messages: list[dict[str, Any]], text: str) -> None:
    """Put ``text`` at the start of the system message, adding one if there is none."""
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = [{"type": "text", "text": text + "\n\n"}, *messages[0]["content"]]
    else:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": text}]})


@dataclass
class ChatJob:
    """A prepared chat request and what shapes its answer."""

    prepared: PreparedRequest
    plan: ToolPlan | None
    include_usage: bool


class ChatHandler:
    """Serves ``/v1/chat/completions`` for one model on one engine."""

    def __init__(self, engine: Engine, settings: Settings, model_id: str, metrics: Metrics):
        self.engine = engine
        self.model_id = model_id
        self.metrics = metrics
        self.reader = MessageReader(engine, settings, metrics)

    async def prepare(self, body: ChatCompletionRequest, request_id: str) -> ChatJob:
        """Validate a request, decode its images, and have the engine render and check it."""
        check_model(body.model, self.model_id)
        plan = plan_tools(
            body.tools,
            body.tool_choice,
            body.parallel_tool_calls,
            body.response_format is not None and body.response_format.type != "text",
        )
        messages, images = await self.reader.read(body.messages, plan)
        sampling = _sampling(body, plan)
        request = EngineRequest(request_id, sampling, messages=messages, images=images)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return ChatJob(await self.engine.prepare(request), plan, include_usage)

    def _generation(self, job: ChatJob, deadline: float, on_usage: UsageSink | None) -> Generation:
        return Generation(self.engine, job.prepared, deadline, self.metrics, CHAT_PATH, on_usage)

    async def complete(
        self, job: ChatJob, deadline: float, on_usage: UsageSink | None = None
    ) -> ChatCompletion:
        """Run a request to the end (or a 504 at ``deadline``) and answer it whole."""
        tally = await self._generation(job, deadline, on_usage).collect()
        wants_logprobs = job.prepared.sampling.options.logprobs
        choices = []
        for i, (text, reason) in enumerate(zip(tally.texts, tally.reasons, strict=True)):
            content, calls = job.plan.parse(text) if job.plan else (text, [])
            choices.append(
                Choice(
                    index=i,
                    message=AssistantMessage(content=content, tool_calls=calls or None),
                    finish_reason=_finish_reason(reason, job.plan, bool(calls)),
                    logprobs={"content": logprob_entries(tally.logprobs[i])}
                    if wants_logprobs
                    else None,
                )
            )
        return ChatCompletion(
            id=completion_id(),
            created=now(),
            model=self.model_id,
            choices=choices,
            usage=usage_of(tally),
        )

    async def open_stream(
        self, job: ChatJob, deadline: float, on_usage: UsageSink | None = None
    ) -> AsyncIterator[str]:
        """Start a request and wait for its first output, so early errors are plain HTTP errors.

        Returns the server-sent events; closing them aborts the request. Past ``deadline`` the
        stream ends with a timeout error event.
        """
        generation = self._generation(job, deadline, on_usage)
        await generation.start()
        return with_done(guarded(self._events(job, generation), lambda body: sse(body)))

    async def _events(self, job: ChatJob, generation: Generation) -> AsyncGenerator[str, None]:
        n = job.prepared.sampling.options.n
        chunk = _ChunkWriter(completion_id(), now(), self.model_id)
        tools = [ToolStream(job.plan) if job.plan else None for _ in range(n)]
        try:
            yield chunk.choices(
                [
                    ChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))
                    for i in range(n)
                ]
            )
            async for event in self._deltas(job, generation, chunk, tools):
                yield event
            if job.include_usage:
                yield chunk.usage(usage_of(generation.tally))
        finally:
            await generation.close()

    async def _deltas(
        self,
        job: ChatJob,
        generation: Generation,
        chunk: _ChunkWriter,
        tools: list[ToolStream | None],
    ) -> AsyncGenerator[str, None]:
        async for output in generation.outputs():
            choices = []
            for d in output.deltas:
                text: str = d.text
                calls: list[DeltaToolCall] = []
                stream = tools[d.index]
                if stream is not None:
                    text, calls = stream.feed(d.text)
                    if d.finish_reason:
                        tail, calls_at_end = stream.finish()
                        text, calls = text + tail, calls + calls_at_end
                if not (text or calls or d.finish_reason or d.logprobs):
                    continue
                called = stream is not None and stream.called
                choices.append(
                    ChunkChoice(
                        index=d.index,
                        delta=DeltaMessage(content=text or None, tool_calls=calls or None),
                        finish_reason=_finish_reason(d.finish_reason, job.plan, called),
                        logprobs=None
                        if d.logprobs is None
                        else {"content": logprob_entries(d.logprobs)},
                    )
                )
            if choices:
                yield chunk.choices(choices)


def _finish_reason(reason: str | None, plan: ToolPlan | None, called: bool) -> str | None:
    """``tool_calls`` when the model called tools (a named function keeps ``stop``, as OpenAI)."""
    if reason == "stop" and called and plan is not None and not plan.named:
        return "tool_calls"
    return reason


@dataclass
class _ChunkWriter:
    """Formats the chunks of one stream, which share an id, a timestamp and a model."""

    id: str
    created: int
    model: str

    def choices(self, choices: list[ChunkChoice]) -> str:
        return sse(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=choices
            ).model_dump(exclude_none=False)
        )

    def usage(self, usage: Usage) -> str:
        return sse(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=[], usage=usage
            ).model_dump()
        )


def usage_of(tally: Tally) -> Usage:
    """OpenAI's ``usage`` of a finished tally."""
    return Usage(
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        total_tokens=tally.total_tokens,
    )


def _sampling(body: ChatCompletionRequest, plan: ToolPlan | None) -> SamplingOptions:
    """The sampling options the client set; what it left unset the engine fills in.

    A forced tool call (``required`` or a named function) becomes the JSON schema its output
    must match.
    """
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    response_format = (plan.response_format() if plan else None) or (
        body.response_format.model_dump(by_alias=True) if body.response_format else None
    )
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
        response_format=response_format,
    )


def logprob_entries(entries: list[TokenLogprob] | None) -> list[dict[str, Any]]:
    """Engine logprobs in OpenAI's ``logprobs.content`` form."""

    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return [
        {**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
        for e in entries or []
    ]
