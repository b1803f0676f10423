"""Let vLLM build engine configs and render prompts on a test machine without a GPU.

Two things stand in the way with vLLM 0.26.0 from PyPI, and this module removes only those:

* Platform detection finds no CUDA device and falls back to ``UnspecifiedPlatform``, whose empty
  device string makes ``create_engine_config`` fail (``VLLM_TARGET_DEVICE=cpu`` does not change
  detection at run time). We pin vLLM's own ``CpuPlatform``, as a vLLM CPU build would.
* vLLM's ``llava.py`` imports ``PixtralRotaryEmbedding`` and ``position_ids_in_meshgrid`` from
  transformers, which transformers 5.17 renamed away, so every LLaVA architecture fails to load.
  Only Pixtral vision towers use them; we add stand-ins that raise if anything calls them. On a
  GPU node the fix is a transformers older than 5.17 (see pyproject's ``gpu`` extra).

vLLM inspects model classes in a subprocess (``registry._SUBPROCESS_COMMAND``, which vLLM documents
as the knob for this), so the subprocess installs the same two fixes first. The engine core is
never started: it needs CUDA kernels this machine does not have.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent


def _missing(name: str) -> Any:
    """A stand-in for a transformers symbol that no longer exists; calling it fails loudly."""

    def unavailable(*args: object, **kwargs: object) -> None:
        raise NotImplementedError(f"transformers no longer has {name}; Pixtral is not served")

    return unavailable


def _alias_removed_pixtral_symbols() -> None:
    import transformers.models.pixtral.modeling_pixtral as pixtral

    for name in ("PixtralRotaryEmbedding", "position_ids_in_meshgrid"):
        if not hasattr(pixtral, name):
            setattr(pixtral, name, _missing(name))


def install() -> None:
    """Apply both fixes in this process and in vLLM's model-inspection subprocesses."""
    _alias_removed_pixtral_symbols()
    import vllm.platforms
    from vllm.model_executor.models import registry
    from vllm.platforms.cpu import CpuPlatform

    vllm.platforms._current_platform = CpuPlatform()
    script = (
        f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import vllm_cpu; "
        "vllm_cpu.install(); from vllm.model_executor.models.registry import _run; _run()"
    )
    registry._SUBPROCESS_COMMAND = [sys.executable, "-c", script]
