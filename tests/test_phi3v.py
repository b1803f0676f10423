"""Phi-3-Vision in Microsoft's format: token rule, tiny checkpoint, engine contract, files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

from tests.engine_contract import decode_together, prefill
from vlmserve.models.families import family_for_checkpoint, get_family
from vlmserve.models.phi3v_files import LONG_FACTOR, SHORT_FACTOR
from vlmserve.models.phi3v_spec import crop_grid, max_image_tokens, tokens_for_grid

SIZES = [(50, 50), (336, 336), (640, 480), (480, 640), (1000, 200), (50, 8000), (2048, 2048)]
FAMILY = get_family("phi3v")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return FAMILY.build_tiny(tmp_path_factory.mktemp("phi3v"))


@pytest.fixture(scope="module")
def loaded(tiny: Path):  # type: ignore[no-untyped-def]
    return FAMILY.load(tiny, "cpu")


def test_grid_follows_the_hd_rule() -> None:
    # 640x480 at 16 crops: 4 crops across (4 * ceil(4 / 1.33) = 8 <= 16, 5 * 4 = 20 > 16),
    # height 1344 / 1.33 = 1008 -> 3 rows.
    assert crop_grid(640, 480, 16) == (3, 4)
    assert crop_grid(480, 640, 16) == (4, 3)
    assert crop_grid(50, 8000, 16) == (16, 1)
    assert tokens_for_grid(3, 4) == 13 * 144 + 1 + 4 * 12
    assert max_image_tokens(16) == tokens_for_grid(16, 1) == 2653
    assert max_image_tokens(1) == tokens_for_grid(1, 1) == 313


@pytest.mark.parametrize("detail", ["low", "high"])
def test_processor_writes_the_formula_count(loaded, detail) -> None:  # type: ignore[no-untyped-def]
    _, processor = loaded
    for width, height in SIZES:
        image = Image.new("RGB", (width, height), (30, 120, 200))
        inputs = processor(
            text="<|user|>\n<|image_1|>\nhi<|end|>\n",
            images=[image],
            **FAMILY.processor_kwargs(detail),
        )
        placed = int((inputs["input_ids"] == processor.image_token_id).sum())
        assert placed == FAMILY.image_tokens(width, height, detail), (width, height)
        assert placed <= FAMILY.max_image_tokens()
    assert FAMILY.image_tokens(2048, 2048, "low") == 313 < FAMILY.image_tokens(2048, 2048, "high")


def test_tiny_prefills_and_decodes_in_a_batch(loaded) -> None:  # type: ignore[no-untyped-def]
    model, processor = loaded
    image = Image.new("RGB", (640, 480), (200, 10, 10))
    first = prefill(FAMILY, model, processor, "describe the image", [image], "low")
    second = prefill(FAMILY, model, processor, "what color is it", [image, image], "low")
    assert first[0]["pixel_values"].shape == (1, 2, 3, 336, 336)
    assert second[1].logits.shape[1] > first[1].logits.shape[1]
    together = decode_together(model, [first[1], second[1]], steps=4)
    alone = [decode_together(model, [out], steps=4)[0] for out in (first[1], second[1])]
    assert together == alone
    assert all(0 <= t < model.config.vocab_size for seq in together for t in seq)


def test_multi_image_prompt_needs_numbered_tags(loaded) -> None:  # type: ignore[no-untyped-def]
    _, processor = loaded
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="do not number"):
        processor(text="<|image_2|>", images=[image])


def test_weight_names_are_microsofts(tiny: Path) -> None:
    names = set(safe_open(tiny / "model.safetensors", "pt").keys())
    pattern = re.compile(
        r"lm_head\.weight|model\.(embed_tokens\.weight|norm\.weight"
        r"|layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj)"
        r"|input_layernorm|post_attention_layernorm)\.weight"
        r"|vision_embed_tokens\.(glb_GN|sub_GN|img_projection\.[02]\.(weight|bias)"
        r"|img_processor\.vision_model\..+))"
    )
    assert all(pattern.fullmatch(name) for name in names), sorted(
        n for n in names if not pattern.fullmatch(n)
    )
    assert {"model.vision_embed_tokens.glb_GN", "model.vision_embed_tokens.sub_GN"} <= names


def test_folder_is_microsofts_layout_and_no_hub_code_runs(tiny: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import transformers.dynamic_module_utils as dynamic

    config = json.loads((tiny / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["architectures"] == ["Phi3VForCausalLM"]
    assert config["auto_map"]["AutoConfig"] == "configuration_phi3_v.Phi3VConfig"
    assert config["embd_layer"]["hd_transform_order"] == "sub_glb"
    assert not list(tiny.glob("*.py"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("hub code was requested")

    monkeypatch.setattr(dynamic, "get_class_from_dynamic_module", refuse)
    assert family_for_checkpoint(tiny) is FAMILY
    FAMILY.load(tiny, "cpu")
    assert not [m for m in sys.modules if "phi3_v" in m and not m.startswith("vlmserve.models.")]


def test_full_size_files(tmp_path: Path) -> None:
    for variant in ("phi-3-vision", "phi-3.5-vision"):
        out = FAMILY.full_config(tmp_path / variant, variant)  # type: ignore[attr-defined]
        config = json.loads((out / "config.json").read_text())
        assert (
            config["num_hidden_layers"],
            config["hidden_size"],
            config["num_attention_heads"],
            config["num_key_value_heads"],
            config["intermediate_size"],
            config["vocab_size"],
        ) == (32, 3072, 32, 32, 8192, 32064)
        assert len(LONG_FACTOR) == len(SHORT_FACTOR) == 3072 // 32 // 2
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(out)
        assert len(tokenizer) == 32064
        assert tokenizer.convert_tokens_to_ids(["<|image|>", "<|end|>", "<|user|>"]) == [
            32044,
            32007,
            32010,
        ]
        assert not list(out.glob("*.safetensors"))
