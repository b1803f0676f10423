"""The vLLM engine: continuous batching and paged KV cache (CUDA or CPU build), via ``AsyncLLM``.

A request goes the way vLLM's own OpenAI server sends it: rendered once by vLLM's renderer
(:mod:`vlmserve.engine.vllm_prepare`), then handed to ``AsyncLLM.generate`` with ``SamplingParams``
in delta mode. Everything here that does not need the engine core (engine arguments, output
mapping, stats) is a plain function, so it runs and is tested without a GPU.

This module and ``vllm_prepare.py`` are the only ones that import vLLM.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any

from vllm.config import VllmConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMValidationError
from vllm.outputs import CompletionOutput, RequestOutput
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
    SamplingDefaults,
    StepSizes,
    TokenLogprob,
)
from vlmserve.engine.errors import EngineFailed, RequestRejected
from vlmserve.engine.vllm_prepare import (
    has_chat_template,
    param_of,
    prepare_request,
    sampling_defaults,
    sampling_params,
)
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


def engine_args_from_settings(
    settings: Settings,
    model_path: str | Path,
    plan_args: Mapping[str, Any] | None = None,
    *,
    cpu: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``AsyncEngineArgs``: the plan's, else the settings' own values.

    A plan already holds the operator's planned settings (the planner honours them), so those
    apply once: from the plan when there is one, from the settings otherwise. Settings vLLM takes
    as they are (``load_format``) apply either way. Video is switched off (``limit 0``) so vLLM
    does not reserve memory for it at start-up. Scheduling is by priority, so batch lines (a
    higher ``priority`` value) yield to interactive requests; among equal priorities it is first
    come, first served, as vLLM's default. Structured output uses xgrammar, the grammar engine the
    API checks schemas with and the transformers engine decodes with, writing compact JSON: free
    whitespace between fields lets a weak model pad an answer until ``max_tokens`` runs out.

    On vLLM's CPU build (``cpu``) the KV cache gets ``cpu_kv_cache_gib``: without a size, vLLM
    would claim most of the machine's memory. With the size given, vLLM's multimodal memory
    profiling (the vision encoder run on the largest images at start-up) measures nothing that
    is used, and it is most of a CPU start-up, so it is skipped there.
    """
    args: dict[str, Any] = {
        "model": str(model_path),
        "trust_remote_code": False,
        "scheduling_policy": "priority",
        "limit_mm_per_prompt": {"image": settings.max_images_per_request, "video": 0},
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    args.update(vllm_args(settings, planned=True) if plan_args is None else plan_args)
    args["limit_mm_per_prompt"] = {"video": 0, **args["limit_mm_per_prompt"]}
    args.update(vllm_args(settings, planned=False))
    if cpu:
        args["kv_cache_memory_bytes"] = int(settings.cpu_kv_cache_gib * 2**30)
        args.setdefault("skip_mm_profiling", True)
    return args


def engine_limits(limits: RequestLimits, engine_args: Mapping[str, Any]) -> RequestLimits:
    """``limits`` with the image count lowered to what vLLM is started with (the planner may
    allow fewer images per prompt than the settings)."""
    images = engine_args.get("limit_mm_per_prompt", {}).get("image", limits.max_images)
    return dataclasses.replace(limits, max_images=min(limits.max_images, images))


def build_vllm_config(engine_args: Mapping[str, Any]) -> VllmConfig:
    """vLLM's full engine configuration; vLLM raises ``ValueError`` for arguments that clash."""
    return AsyncEngineArgs(**engine_args).create_engine_config()


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
    """The latest scheduler numbers per engine core, and every step's batch size, written by
    :class:`SnapshotStatLogger`."""

    def __init__(self) -> None:
        self.by_engine: dict[int, SchedulerStats] = {}
        self.step_sizes = StepSizes()

    def stats(self) -> EngineStats:
        """Running and waiting requests summed over engine cores, the fullest KV cache."""
        snapshots = list(self.by_engine.values())
        return EngineStats(
            running=sum(s.num_running_reqs for s in snapshots),
            waiting=sum(s.num_waiting_reqs for s in snapshots),
            kv_cache_usage=max((s.kv_cache_usage for s in snapshots), default=None),
            step_sizes=self.step_sizes,
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
            self.snapshot.step_sizes.observe(scheduler_stats.num_running_reqs)

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
        self.family: ModelFamily = family or family_for_checkpoint(model_path)
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
        stream = llm.generate(request.inputs, params, request.request_id, priority=request.priority)
        try:
            async for output in stream:
                yield engine_output(output, top_n)
        except ValueError as exc:
            # vLLM checks the rendered prompt again when it is added.
            param = request.request.input_param
            if isinstance(exc, VLLMValidationError):
                param = param_of(exc, request.sampling) or param
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
            return dataclasses.replace(self._snapshot.stats(), running=0, waiting=0)
        return self._snapshot.stats()
