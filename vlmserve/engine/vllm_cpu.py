"""What vLLM's CPU build cannot run, found from a checkpoint's ``config.json`` before it starts.

vLLM's CPU attention kernels take a fixed set of head sizes. A model outside that set loads,
reports ready, and then kills the engine on its first request; asking here turns that into one
line at start-up. The set comes from vLLM's own CPU attention backend, so it follows the vLLM
version installed.

Quantization: vLLM's CPU build runs AWQ and GPTQ checkpoints (its ``CPUWNA16LinearKernel``) and
bitsandbytes where that package is installed, but not fp8 weights; see
benchmarks/results/2026-12-03-cpu-quantization.md. Both failures would otherwise surface a minute
into start-up as a traceback from vLLM's worker.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

#: Where each served family keeps its language model's config (top level for Phi-3-V).
_TEXT_CONFIG_KEYS = ("text_config", "llm_config")


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a vision-language ``config.json``."""
    for key in _TEXT_CONFIG_KEYS:
        if isinstance(config.get(key), dict):
            return dict(config[key])
    return config


def text_head_size(model_path: str | Path) -> int | None:
    """The language model's attention head width, or None when the config does not say."""
    text = text_config(json.loads((Path(model_path) / "config.json").read_text()))
    if text.get("head_dim"):
        return int(text["head_dim"])
    hidden, heads = text.get("hidden_size"), text.get("num_attention_heads")
    if not hidden or not heads:
        return None
    return int(hidden) // int(heads)


def cpu_supported_head_sizes() -> list[int]:
    """The head sizes vLLM's CPU attention kernels take."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return list(CPUAttentionBackend.get_supported_head_sizes())


def cpu_refusal(model_path: str | Path) -> str | None:
    """Why vLLM's CPU build cannot serve ``model_path``, or None when nothing stands in the way."""
    head = text_head_size(model_path)
    if head is None:
        return None
    supported = cpu_supported_head_sizes()
    if head not in supported:
        sizes = ", ".join(str(s) for s in supported)
        return (
            f"its attention head size is {head}, and vLLM's CPU attention takes only {sizes}; "
            "serve it with --engine transformers"
        )
    return None


#: Weight quantizations vLLM's CPU build has no kernels for, and why. vLLM 0.26's CPU build
#: registers ``_C::dynamic_scaled_fp8_quant`` without a kernel (no arguments), so fp8 weights
#: fail while the model loads.
CPU_MISSING_KERNELS = {
    "fp8": "fp8 weights need _C::dynamic_scaled_fp8_quant, which vLLM's CPU build lacks",
}


def quantization_of(model_path: str | Path, asked: str | None) -> str | None:
    """The weight quantization vLLM will run: the one asked for, else the checkpoint's own
    (``quantization_config.quant_method`` in ``config.json``), else None."""
    if asked:
        return asked
    config = json.loads((Path(model_path) / "config.json").read_text())
    method = (config.get("quantization_config") or {}).get("quant_method")
    return str(method) if method else None


def bitsandbytes_installed() -> bool:
    """Whether the ``bitsandbytes`` package is importable (checked without importing it)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def cpu_quantization_refusal(model_path: str | Path, asked: str | None) -> str | None:
    """Why vLLM's CPU build cannot run ``model_path`` with quantization ``asked`` (the setting,
    or None for the checkpoint's own), or None when it can."""
    method = quantization_of(model_path, asked)
    if method in CPU_MISSING_KERNELS:
        return (
            f"quantization {method} is GPU-only: {CPU_MISSING_KERNELS[method]}; "
            "serve a 16-bit, AWQ or GPTQ checkpoint on this machine"
        )
    if method == "bitsandbytes" and not bitsandbytes_installed():
        return (
            "quantization bitsandbytes needs the bitsandbytes package, which is not installed "
            "(vlmserve does not depend on it): pip install 'bitsandbytes>=0.48.1'"
        )
    return None
