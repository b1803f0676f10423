"""vLLM's own input processing renders the tiny phi3v and internvl2 folders without remote code.

vLLM 0.26.0 has native ``Phi3VForCausalLM`` and ``InternVLChatModel``; what it needs from the
checkpoint's hub code (the ``phi3_v`` / ``internvl_chat`` configs and Phi-3-V's processor) comes
from :mod:`vlmserve.models.hf_registry` instead, with ``trust_remote_code=False``. Only the
config and the multimodal processor run here; tests/test_api.py serves both folders on the engine
core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlmserve.models.families import get_family

pytest.importorskip("vllm")
IMAGE = Image.new("RGB", (640, 480), (200, 10, 10))
CASES = {
    "phi3v": "<|user|>\n<|image_1|>\ndescribe<|end|>\n<|assistant|>\n",
    "internvl2": "<|im_start|>user\n<image>\ndescribe<|im_end|><|im_start|>assistant\n",
}


def _vllm_processor(path: Path) -> Any:
    """vLLM's multimodal processor for ``path`` (on whichever platform vLLM detects)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.multimodal import MULTIMODAL_REGISTRY

    import vlmserve.models.hf_registry  # noqa: F401  (registers the original formats' classes)

    args = AsyncEngineArgs(
        model=str(path),
        trust_remote_code=False,
        max_model_len=8192,
        limit_mm_per_prompt={"image": 2},
    )
    config = args.create_engine_config()
    assert config.model_config.trust_remote_code is False
    return MULTIMODAL_REGISTRY.create_processor(config.model_config)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(CASES))
def test_vllm_renders_placeholders(name: str, tmp_path: Path) -> None:
    family = get_family(name)
    processor = _vllm_processor(family.build_tiny(tmp_path / name))
    for detail in ("low", "high"):
        items = processor.info.parse_mm_data({"image": [IMAGE]})
        out = processor(CASES[name], items, hf_processor_mm_kwargs=family.processor_kwargs(detail))
        placeholder = out["mm_placeholders"]["image"][0]
        assert placeholder.length == family.image_tokens(*IMAGE.size, detail), detail


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("name", "variant"), [("phi3v", "phi-3.5-vision"), ("internvl2", "internvl2-8b")]
)
def test_vllm_reads_full_size_files(name: str, variant: str, tmp_path: Path) -> None:
    family = get_family(name)
    folder = family.full_config(tmp_path / variant, variant)  # type: ignore[attr-defined]
    processor = _vllm_processor(folder)
    items = processor.info.parse_mm_data({"image": [IMAGE]})
    out = processor(CASES[name], items, hf_processor_mm_kwargs=family.processor_kwargs("high"))
    assert out["mm_placeholders"]["image"][0].length == family.image_tokens(*IMAGE.size, "high")
