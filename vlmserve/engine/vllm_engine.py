"""The vLLM engine: continuous batching and paged KV cache on a GPU, through vLLM's ``AsyncLLM``.

A request goes the way vLLM's own OpenAI server sends it: the chat is rendered by vLLM's renderer
(the checkpoint's chat template, then vLLM's multimodal processor, which expands each image
placeholder into the image's tokens), and the rendered input goes to ``AsyncLLM.generate`` with
``SamplingParams`` in delta mode. Everything here that does not need the engine core (argument
mapping, rendering, validation) is a plain function, so it runs and is tested without a GPU.

This is the only module that imports vLLM.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any

from vllm.config import VllmConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMValidationError
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.renderers.base import BaseRenderer
from vllm.renderers.params import ChatParams
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from vllm.tokenizers import TokenizerLike
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import IterationStats, SchedulerStats

import vlmserve.models.hf_registry  # noqa: F401  (original InternVL-2 / Phi-3-V configs, no remote code)
from vlmserve.config import Settings, vllm_args
from vlmserve.engine.base import (
    ChoiceDelta,
    Engine,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    PreparedRequest,
    RequestLimits,
    Sampling,
    SamplingDefaults,
    TokenLogprob,
)
from vlmserve.engine.errors import EngineFailed, RequestRejected
from vlmserve.engine.grammar import ANY_OBJECT, schema_text
from vlmserve.engine.prepare import Rendered, check_image_count, finish, shared_processor_kwargs
from vlmserve.models.base import ModelFamily
from vlmserve.models.families import family_for_checkpoint

logger = logging.getLogger(__name__)

#: vLLM's finish reasons as OpenAI's; "repetition" is vLLM stopping a looping output.
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "repetition": "stop",
}
#: Sampling fields whose plain ``ValueError`` from vLLM names no parameter; its message starts
#: with the field's name. Longest first so that "n" does not shadow the others.
_MESSAGE_PARAMS = (
    "presence_penalty",
    "frequency_penalty",
    "min_tokens",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
)


def engine_args_from_settings(
    settings: Settings, model_path: str | Path, plan_args: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``AsyncEngineArgs``: the plan's, else the settings' own values.

    A plan already holds the operator's planned settings (the planner honours them), so those
    apply once: from the plan when there is one, from the settings otherwise. Settings vLLM takes
    as they are (``load_format``) apply either way. Video is switched off (``limit 0``) so vLLM
    does not reserve memory for it at start-up.
    """
    args: dict[str, Any] = {
        "model": str(model_path),
        "trust_remote_code": False,
        "limit_mm_per_prompt": {"image": settings.max_images_per_request, "video": 0},
    }
    args.update(vllm_args(settings, planned=True) if plan_args is None else plan_args)
    args["limit_mm_per_prompt"] = {"video": 0, **args["limit_mm_per_prompt"]}
    args.update(vllm_args(settings, planned=False))
    return args


def engine_limits(limits: RequestLimits, engine_args: Mapping[str, Any]) -> RequestLimits:
    """``limits`` with the image count lowered to what vLLM is started with (the planner may
    allow fewer images per prompt than the settings)."""
    images = engine_args.get("limit_mm_per_prompt", {}).get("image", limits.max_images)
    return dataclasses.replace(limits, max_images=min(limits.max_images, images))


def build_vllm_config(engine_args: Mapping[str, Any]) -> VllmConfig:
    """vLLM's full engine configuration; vLLM raises ``ValueError`` for arguments that clash."""
    return AsyncEngineArgs(**engine_args).create_engine_config()


def structured_outputs(response_format: Mapping[str, Any] | None) -> StructuredOutputsParams | None:
    """OpenAI's ``response_format`` as vLLM's structured-output constraint."""
    text = schema_text(response_format)
    if text is None:
        return None
    if text == ANY_OBJECT:
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=json.loads(text))


def _param_of(exc: ValueError, sampling: Sampling) -> str | None:
    """The OpenAI parameter a vLLM validation error is about."""
    name = exc.parameter if isinstance(exc, VLLMValidationError) else None
    if name is None:
        message = str(exc)
        name = next((p for p in _MESSAGE_PARAMS if message.startswith(f"{p} ")), None)
    if name == "logprobs":
        return "top_logprobs"
    if name is None and sampling.options.response_format is not None:
        return "response_format"
    return name


def sampling_params(sampling: Sampling) -> SamplingParams:
    """``SamplingParams`` for a request, streaming deltas; vLLM's refusals become 400s."""
    options = sampling.options
    if options.top_logprobs and not options.logprobs:
        raise RequestRejected("top_logprobs requires logprobs to be true.", param="top_logprobs")
    constraint = structured_outputs(options.response_format)
    try:
        return SamplingParams(
            n=options.n,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            repetition_penalty=sampling.repetition_penalty,
            seed=options.seed,
            stop=list(options.stop),
            min_tokens=options.min_tokens,
            ignore_eos=options.ignore_eos,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            logprobs=options.top_logprobs if options.logprobs else None,
            structured_outputs=constraint,
            output_kind=RequestOutputKind.DELTA,
        )
    except ValueError as exc:
        raise RequestRejected(str(exc), param=_param_of(exc, sampling)) from exc


def verify_sampling(
    sampling: Sampling, config: VllmConfig, tokenizer: TokenizerLike | None
) -> SamplingParams:
    """Map ``sampling`` and run the checks vLLM runs when a request arrives (logprob limit,
    JSON schema compiled by the structured-output backend)."""
    params = sampling_params(sampling)
    try:
        params.verify(
            config.model_config,
            config.speculative_config,
            config.structured_outputs_config,
            tokenizer,
        )
    except ValueError as exc:
        raise RequestRejected(str(exc), param=_param_of(exc, sampling)) from exc
    return params


def vllm_messages(family: ModelFamily, request: EngineRequest) -> list[dict[str, Any]]:
    """The request's messages in vLLM's chat form, each image part carrying its prepared image."""
    images = iter(request.images)
    messages = []
    for message in request.messages or ():
        content = message["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    item = next(images)
                    prepared = family.prepare_image(item.image, item.detail)
                    part = {"type": "image_pil", "image_pil": prepared}
                parts.append(part)
            content = parts
        messages.append({**message, "content": content})
    return messages


def has_chat_template(model_path: str | Path) -> bool:
    """Whether a local checkpoint brings its own chat template (tokenizer or processor)."""
    path = Path(model_path)
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        file = path / name
        if file.exists() and "chat_template" in json.loads(file.read_text()):
            return True
    return False


async def render_request(
    renderer: BaseRenderer,
    family: ModelFamily,
    request: EngineRequest,
    chat_template: str | None = None,
) -> Any:
    """vLLM's engine input for a request: token ids with every image's placeholders expanded.

    Chat messages go through the chat template (``chat_template`` replaces the checkpoint's, for
    checkpoints that have none); a plain prompt is tokenized as it is.
    """
    kwargs = shared_processor_kwargs(family, request.images) or None
    extras = {"mm_processor_kwargs": kwargs} if kwargs else None
    try:
        if request.prompt is not None:
            # vLLM types prompts as TypedDicts; this is its TextPrompt.
            prompt: Any = {"prompt": request.prompt}
            if request.images:
                prepared = [family.prepare_image(i.image, i.detail) for i in request.images]
                prompt["multi_modal_data"] = {"image": prepared}
            (engine_input,) = await renderer.render_cmpl_async([prompt], prompt_extras=extras)
            return engine_input
        params = ChatParams(
            chat_template=chat_template,
            chat_template_kwargs={"add_generation_prompt": True},
            mm_processor_kwargs=kwargs,
        )
        # vLLM types chat messages as OpenAI TypedDicts; ours are plain dicts of the same shape.
        conversation: list[Any] = vllm_messages(family, request)
        _, (engine_input,) = await renderer.render_chat_async(
            [conversation], params, prompt_extras=extras
        )
    except ValueError as exc:
        raise RequestRejected(str(exc), param=request.input_param) from exc
    return engine_input


def sampling_defaults(config: VllmConfig) -> SamplingDefaults:
    """The checkpoint's sampling defaults as vLLM reads them (its ``generation_config`` setting
    decides where from, as in vLLM's own server)."""
    return SamplingDefaults.from_generation_config(config.model_config.get_diff_sampling_param())


def image_token_counts(engine_input: Mapping[str, Any]) -> list[int]:
    """Prompt positions holding each image's features, from vLLM's rendered placeholders."""
    placeholders = (engine_input.get("mm_placeholders") or {}).get("image") or ()
    return [p.get_num_embeds() for p in placeholders]


async def prepare_request(
    renderer: BaseRenderer,
    config: VllmConfig,
    family: ModelFamily,
    request: EngineRequest,
    *,
    limits: RequestLimits,
    defaults: SamplingDefaults,
    chat_template: str | None = None,
) -> PreparedRequest:
    """Render ``request`` once with vLLM's renderer, check it and resolve its sampling; the
    resolved options are checked as vLLM checks them when a request arrives."""
    check_image_count(len(request.images), limits)
    engine_input = await render_request(renderer, family, request, chat_template)
    prompt_tokens = len(engine_input["prompt_token_ids"])
    rendered = Rendered(prompt_tokens, image_token_counts(engine_input), engine_input)
    prepared = finish(request, rendered, config.model_config.max_model_len, limits, defaults)
    verify_sampling(prepared.sampling, config, renderer.tokenizer)
    return prepared


def token_logprobs(output: CompletionOutput, top_n: int) -> list[TokenLogprob] | None:
    """Per-token logprobs of a delta, with the ``top_n`` most likely tokens at each position."""
    if output.logprobs is None:
        return None
    entries = []
    for token_id, position in zip(output.token_ids, output.logprobs, strict=False):
        if position is None:
            continue
        chosen = position[token_id]
        ranked = sorted(
            (lp for lp in position.values() if lp.rank is not None and lp.rank <= top_n),
            key=lambda lp: lp.rank or 0,
        )
        top = [(lp.decoded_token or "", lp.logprob) for lp in ranked[:top_n]]
        entries.append(TokenLogprob(chosen.decoded_token or "", chosen.logprob, top))
    return entries


def engine_output(output: RequestOutput, top_n: int) -> EngineOutput:
    """One vLLM delta as vlmserve's :class:`EngineOutput`."""
    deltas = []
    for choice in output.outputs:
        if choice.finish_reason == "error":
            raise EngineFailed("The engine failed while generating this request.")
        reason = _FINISH_REASONS.get(choice.finish_reason) if choice.finish_reason else None
        deltas.append(
            ChoiceDelta(
                index=choice.index,
                text=choice.text,
                num_tokens=len(choice.token_ids),
                finish_reason=reason,
                logprobs=token_logprobs(choice, top_n),
            )
        )
    return EngineOutput(prompt_tokens=len(output.prompt_token_ids or ()), deltas=deltas)


class SchedulerSnapshot:
    """The latest scheduler numbers per engine core, written by :class:`SnapshotStatLogger`."""

    def __init__(self) -> None:
        self.by_engine: dict[int, SchedulerStats] = {}

    def stats(self) -> EngineStats:
        """Running and waiting requests summed over engine cores, the fullest KV cache."""
        snapshots = list(self.by_engine.values())
        return EngineStats(
            running=sum(s.num_running_reqs for s in snapshots),
            waiting=sum(s.num_waiting_reqs for s in snapshots),
            kv_cache_usage=max((s.kv_cache_usage for s in snapshots), default=None),
        )


class SnapshotStatLogger(StatLoggerBase):
    """A vLLM stat logger that keeps the last scheduler stats instead of printing them."""

    def __init__(self, snapshot: SchedulerSnapshot, vllm_config: VllmConfig, engine_index: int = 0):
        self.snapshot = snapshot
        self.engine_index = engine_index

    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: IterationStats | None,
        mm_cache_stats: object | None = None,
        engine_idx: int = 0,
    ) -> None:
        """Keep the scheduler's numbers; vLLM calls this after every engine step."""
        if scheduler_stats is not None:
            self.snapshot.by_engine[engine_idx] = scheduler_stats

    def log_engine_initialized(self) -> None:
        """Nothing to log: vlmserve reads the snapshot."""


class VLLMEngine(Engine):
    """Serves one checkpoint with vLLM's ``AsyncLLM`` (engine core in its own process)."""

    name = "vllm"

    def __init__(
        self,
        model_path: str | Path,
        engine_args: Mapping[str, Any],
        family: ModelFamily | None = None,
        limits: RequestLimits | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.engine_args = dict(engine_args)
        self.family = family or family_for_checkpoint(model_path)
        self.limits = engine_limits(limits or RequestLimits(), self.engine_args)
        self._chat_template = None if has_chat_template(model_path) else self.family.chat_template
        self._config: VllmConfig | None = None
        self._defaults: SamplingDefaults | None = None
        self._llm: AsyncLLM | None = None
        self._snapshot = SchedulerSnapshot()

    @property
    def config(self) -> VllmConfig:
        """vLLM's engine configuration, built on first use."""
        if self._config is None:
            self._config = build_vllm_config(self.engine_args)
        return self._config

    @property
    def max_model_len(self) -> int:
        """The context length vLLM settled on (planned, or the checkpoint's)."""
        return int(self.config.model_config.max_model_len)

    async def start(self) -> None:
        """Start the engine core: load weights, profile memory, allocate the KV cache."""
        if self._llm is not None:
            return
        self._defaults = sampling_defaults(self.config)
        # Built on the event loop's thread, as vLLM's own server does: the engine core is a
        # separate process started from here, and forking from a worker thread is unsafe.
        self._llm = AsyncLLM.from_vllm_config(
            self.config,
            stat_loggers=[functools.partial(SnapshotStatLogger, self._snapshot)],
            disable_log_stats=True,
        )
        logger.info("vLLM engine ready: %s, max_model_len %d", self.model_path, self.max_model_len)

    async def shutdown(self) -> None:
        """Stop the engine core process and free the GPU."""
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def _started(self) -> AsyncLLM:
        if self._llm is None:
            raise RuntimeError("the vLLM engine has not been started")
        return self._llm

    async def prepare(self, request: EngineRequest) -> PreparedRequest:
        """Render with vLLM's renderer, and refuse what vLLM would refuse: too many images or
        image tokens, a prompt the context cannot hold, sampling values, logprob counts, JSON
        schemas, images that need different processor settings in one request."""
        llm = self._started()
        return await prepare_request(
            llm.renderer,
            self.config,
            self.family,
            request,
            limits=self.limits,
            defaults=self._defaults or SamplingDefaults(),
            chat_template=self._chat_template,
        )

    async def generate(self, request: PreparedRequest) -> AsyncGenerator[EngineOutput, None]:
        """Hand the rendered request to vLLM and stream its deltas.

        Closing this iterator closes vLLM's, which aborts the request in the engine core (vLLM
        does that on ``GeneratorExit`` and on cancellation).
        """
        llm = self._started()
        params = sampling_params(request.sampling)
        top_n = request.sampling.options.top_logprobs
        stream = llm.generate(request.inputs, params, request.request_id)
        try:
            async for output in stream:
                yield engine_output(output, top_n)
        except ValueError as exc:
            # vLLM checks the rendered prompt again when it is added.
            param = request.request.input_param
            if isinstance(exc, VLLMValidationError):
                param = _param_of(exc, request.sampling) or param
            raise RequestRejected(str(exc), param=param) from exc
        finally:
            await stream.aclose()

    async def abort(self, request_id: str) -> None:
        """Abort a request by the id it was submitted with; unknown ids are ignored by vLLM."""
        if self._llm is not None:
            await self._llm.abort(request_id)

    def stats(self) -> EngineStats:
        """Running and waiting requests and KV-cache use, from vLLM's last scheduler step.

        The engine core only reports while it steps, so an idle engine (no unfinished request
        in the front end) reports zero rather than its last busy step.
        """
        if self._llm is None or not self._llm.output_processor.has_unfinished_requests():
            usage = self._snapshot.stats().kv_cache_usage
            return EngineStats(running=0, waiting=0, kv_cache_usage=usage)
        return self._snapshot.stats()
