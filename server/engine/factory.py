"""Choosing and building the engine for a model."""

from __future__ import annotations

import logging
from pathlib import Path

from server.config import Settings
from server.engine.base import Engine

logger = logging.getLogger(__name__)


class EngineUnavailableError(RuntimeError):
    """The engine asked for cannot run on this machine; the message says why."""


def build_engine(settings: Settings, model_path: Path) -> Engine:
    """The engine ``settings.engine`` names (``auto``: transformers until vLLM is wired in)."""
    if settings.engine == "vllm":
        raise EngineUnavailableError("the vLLM engine is not available in this build")
    from server.engine.transformers_engine import TransformersEngine

    logger.info("engine: transformers on %s", settings.device)
    return TransformersEngine(
        model_path, device=settings.device, max_batch_size=settings.max_batch_size
    )
