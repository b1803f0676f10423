"""The ``/v1/completions`` endpoint's edges: text prompts in, legacy completions out.

Each prompt of a list is its own engine request (prepared and run concurrently); choice ``index``
runs over prompts, then over ``n``, as OpenAI numbers them. Prompts are used as they are, with no
chat template; images stay a chat feature.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from vlmserve.api.chat import check_model, usage_of
from vlmserve.api.errors import BadRequestError
from vlmserve.api.metrics import Metrics
from vlmserve.api.protocol import Usage, now
from vlmserve.api.protocol_completions import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    completion_id,
    legacy_logprobs,
)
from vlmserve.api.serving import (
    Generation,
    Tally,
    UsageSink,
    guarded,
    merged,
    sse,
    with_done,
)
from vlmserve.engine.base import (
    ChoiceDelta,
    Engine,
    EngineRequest,
    PreparedRequest,
    SamplingOptions,
)
from vlmserve.images.pipeline import gather_or_cancel

COMPLETIONS_PATH = "/v1/completions"


@dataclass
class CompletionJob:
    """The prepared requests of one completions call (one per prompt) and its options."""

    prepared: list[PreparedRequest]
    prompts: list[str]
    echo: bool
    logprobs: bool
    include_usage: bool

    def echoed(self, prompt: int) -> str:
        """The text that starts each choice of ``prompt``: the prompt itself with ``echo``."""
        return self.prompts[prompt] if self.echo else ""


class CompletionHandler:
    """Serves ``/v1/completions`` for one model on one engine."""

    def __init__(self, engine: Engine, model_id: str, metrics: Metrics) -> None:
        self.engine = engine
        self.model_id = model_id
        self.metrics = metrics

    async def prepare(self, body: CompletionRequest, request_id: str) -> CompletionJob:
        """Validate the call and have the engine prepare every prompt."""
        check_model(body.model, self.model_id)
        if body.echo and body.logprobs is not None:
            raise BadRequestError(
                "echo with logprobs needs the prompt's logprobs, which vlmserve does not "
                "compute; ask for one of them.",
                param="echo",
            )
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        sampling = SamplingOptions(
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            n=body.n,
            stop=stop,
            min_tokens=body.min_tokens,
            ignore_eos=body.ignore_eos,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logprobs=body.logprobs is not None,
            top_logprobs=body.logprobs or 0,
        )
        ids = [
            request_id if len(prompts) == 1 else f"{request_id}-{i}" for i in range(len(prompts))
        ]
        prepared = await gather_or_cancel(
            [
                self.engine.prepare(EngineRequest(rid, sampling, prompt=prompt))
                for rid, prompt in zip(ids, prompts, strict=True)
            ]
        )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return CompletionJob(prepared, prompts, body.echo, body.logprobs is not None, include_usage)

    def _generations(
        self, job: CompletionJob, deadline: float, on_usage: UsageSink | None
    ) -> list[Generation]:
        return [
            Generation(self.engine, p, deadline, self.metrics, COMPLETIONS_PATH, on_usage)
            for p in job.prepared
        ]

    async def complete(
        self, job: CompletionJob, deadline: float, on_usage: UsageSink | None = None
    ) -> Completion:
        """Run every prompt to the end and answer them whole."""
        tallies: list[Tally] = await gather_or_cancel(
            [g.collect() for g in self._generations(job, deadline, on_usage)]
        )
        choices = []
        for p, tally in enumerate(tallies):
            for j, (text, reason) in enumerate(zip(tally.texts, tally.reasons, strict=True)):
                start = job.echoed(p)
                logprobs = legacy_logprobs(tally.logprobs[j], len(start)) if job.logprobs else None
                choices.append(
                    CompletionChoice(
                        index=p * len(tally.texts) + j,
                        text=start + text,
                        logprobs=logprobs,
                        finish_reason=reason,
                    )
                )
        return Completion(
            id=completion_id(),
            created=now(),
            model=self.model_id,
            choices=choices,
            usage=_total_usage(tallies),
        )

    async def open_stream(
        self, job: CompletionJob, deadline: float, on_usage: UsageSink | None = None
    ) -> AsyncIterator[str]:
        """Start every prompt and wait for their first outputs; then stream their chunks."""
        generations = self._generations(job, deadline, on_usage)
        try:
            await gather_or_cancel([g.start() for g in generations])
        except BaseException:
            for generation in generations:
                await generation.close()
            raise
        return with_done(guarded(self._events(job, generations), sse))

    async def _events(
        self, job: CompletionJob, generations: list[Generation]
    ) -> AsyncGenerator[str, None]:
        chunk = _Chunks(completion_id(), now(), self.model_id)
        n = job.prepared[0].sampling.options.n
        try:
            if job.echo:
                yield chunk.write(
                    [
                        CompletionChoice(index=p * n + j, text=prompt)
                        for p, prompt in enumerate(job.prompts)
                        for j in range(n)
                    ]
                )
            offsets = [len(job.echoed(p)) for p in range(len(job.prompts)) for _ in range(n)]
            async for p, output in merged([g.outputs() for g in generations]):
                choices = [_choice(p * n, d, job.logprobs, offsets) for d in output.deltas]
                choices = [c for c in choices if c.text or c.finish_reason or c.logprobs]
                if choices:
                    yield chunk.write(choices)
            if job.include_usage:
                yield chunk.write([], _total_usage([g.tally for g in generations]))
        finally:
            for generation in generations:
                await generation.close()


def _choice(base: int, delta: ChoiceDelta, logprobs: bool, offsets: list[int]) -> CompletionChoice:
    """One streamed choice; ``offsets`` tracks each choice's text length for ``text_offset``."""
    index = base + delta.index
    entries = legacy_logprobs(delta.logprobs or [], offsets[index]) if logprobs else None
    offsets[index] += len(delta.text)
    return CompletionChoice(
        index=index, text=delta.text, logprobs=entries, finish_reason=delta.finish_reason
    )


@dataclass
class _Chunks:
    """Formats the chunks of one stream, which share an id, a timestamp and a model."""

    id: str
    created: int
    model: str

    def write(self, choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        completion = Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        return sse(completion.model_dump())


def _total_usage(tallies: list[Tally]) -> Usage:
    """Usage summed over the prompts of one call."""
    usages = [usage_of(t) for t in tallies]
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        total_tokens=sum(u.total_tokens for u in usages),
    )
