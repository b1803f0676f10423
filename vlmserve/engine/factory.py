"""Choosing and building the engine for a model.

``auto`` picks vLLM when a GPU is visible and vLLM is installed, the transformers engine
otherwise. Asking for vLLM where it cannot run fails at once with
:class:`EngineUnavailableError` (the CLI prints it as one line and exits with 2), before any
model is loaded. Engine modules are imported only once chosen, so a CPU machine never imports vLLM.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
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


def choose_engine(settings: Settings) -> tuple[str, str]:
    """``(engine name, reason)`` for ``settings.engine`` on this machine."""
    name, reason = _choose(settings)
    logger.info("engine: %s (%s)", name, reason)
    return name, reason


def _choose(settings: Settings) -> tuple[str, str]:
    if settings.engine == "transformers":
        return "transformers", "engine=transformers was asked for"
    gpus = detect_gpus()
    names = ", ".join(gpu.name for gpu in gpus)
    if settings.engine == "vllm":
        if not gpus:
            raise EngineUnavailableError(
                "engine=vllm needs an NVIDIA GPU and none is visible (NVML found no device); "
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

        args = engine_args_from_settings(settings, model_path, plan_args)
        return VLLMEngine(model_path, args, limits=limits)
    from vlmserve.engine.transformers_engine import TransformersEngine

    return TransformersEngine(
        model_path, device=settings.device, max_batch_size=settings.max_batch_size, limits=limits
    )
