"""What vLLM's CPU build needs from a checkpoint, checked without starting an engine.

The engine itself runs in tests/test_api.py (every family) and tests/test_shutdown.py (a LLaVA
saved by transformers 5).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import FAMILIES
from vlmserve.engine.vllm_cpu import text_head_size
from vlmserve.models.llava import hub_weight_name


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_checkpoints_fit_vllms_cpu_kernels(family: str, tiny_model) -> None:
    pytest.importorskip("vllm")
    from vlmserve.engine.vllm_cpu import cpu_refusal, cpu_supported_head_sizes

    path: Path = tiny_model(family)
    assert text_head_size(path) in cpu_supported_head_sizes()
    assert cpu_refusal(path) is None
    config = json.loads((path / "config.json").read_text())
    assert config.get("sliding_window") is None


@pytest.mark.parametrize("family", ["llava", "llava-next"])
def test_tiny_llava_weights_use_the_hub_layout(family: str, tiny_model) -> None:
    names = set(safe_open(tiny_model(family) / "model.safetensors", "pt").keys())
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in names
    assert not any(name.startswith("vision_tower.embeddings.") for name in names)


def test_flat_clip_names_map_to_the_hub_layout() -> None:
    """The rename the tiny writer applies and vLLM's LLaVA classes apply at load time."""
    for flat, hub in [
        ("vision_tower.embeddings.patch_embedding.weight", "vision_tower.vision_model.embeddings"),
        ("model.vision_tower.encoder.layers.0.mlp.fc1.bias", "model.vision_tower.vision_model."),
        ("vision_tower.pre_layrnorm.weight", "vision_tower.vision_model.pre_layrnorm"),
    ]:
        assert hub_weight_name(flat).startswith(hub)
    kept = "vision_tower.vision_model.embeddings.class_embedding"
    assert hub_weight_name(kept) == kept
    assert hub_weight_name("language_model.model.embed_tokens.weight").startswith("language_model")


def test_vllms_llava_classes_read_flat_clip_names() -> None:
    pytest.importorskip("vllm")
    from vlmserve.models import vllm_llava

    for cls in (
        vllm_llava.LlavaForConditionalGeneration,
        vllm_llava.LlavaNextForConditionalGeneration,
    ):
        mapper = cls.hf_to_vllm_mapper
        assert mapper._map_name("model.vision_tower.embeddings.patch_embedding.weight") == (
            "vision_tower.vision_model.embeddings.patch_embedding.weight"
        )
        assert mapper._map_name("lm_head.weight") == "language_model.lm_head.weight"


def test_the_vllm_plugin_registers_the_llava_classes() -> None:
    pytest.importorskip("vllm")
    from vllm import ModelRegistry

    from vlmserve.models.vllm_plugin import register

    register()
    for arch in ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration"):
        model = ModelRegistry.models[arch]
        assert getattr(model, "module_name", "") == "vlmserve.models.vllm_llava", model
