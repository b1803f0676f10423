"""vlmserve's vLLM plugin, run by vLLM in every process it starts (front end, engine core,
workers), through the ``vllm.general_plugins`` entry point in ``pyproject.toml``.

It registers the original Phi-3-V and InternVL-2 formats with transformers (no hub code needed),
and vLLM's LLaVA classes with a weight-name mapping that also reads transformers-5-saved folders.
The model classes are named lazily, so nothing heavy is imported until vLLM loads such a model.
"""

from __future__ import annotations

#: Architectures whose vLLM class vlmserve replaces, and the module that holds the replacement.
_MODEL_OVERRIDES = {
    "LlavaForConditionalGeneration": "vlmserve.models.vllm_llava",
    "LlavaNextForConditionalGeneration": "vlmserve.models.vllm_llava",
}


def register() -> None:
    """Register the original formats and the LLaVA weight-name fix (idempotent)."""
    from vllm import ModelRegistry

    from vlmserve.models.hf_registry import register_original_formats

    register_original_formats()
    for arch, module in _MODEL_OVERRIDES.items():
        ModelRegistry.register_model(arch, f"{module}:{arch}")
