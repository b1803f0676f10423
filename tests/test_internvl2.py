"""InternVL-2 in OpenGVLab's format: tiles, tiny checkpoint, weight conversion, prompts, files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import InternVLForConditionalGeneration

from tests.engine_contract import decode_together, prefill
from vlmserve.models.families import family_for_checkpoint, get_family
from vlmserve.models.internvl2_config import InternVLChatConfig
from vlmserve.models.internvl2_convert import hf_config, to_hf, to_original
from vlmserve.models.internvl2_files import INTERNLM2_5_7B, INTERNVIT_300M, chat_config
from vlmserve.models.internvl2_template import chat_template_for

FAMILY = get_family("internvl2")
SIZES = [(50, 50), (448, 448), (640, 480), (480, 640), (1000, 200), (2048, 2048)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return FAMILY.build_tiny(tmp_path_factory.mktemp("internvl2"))


@pytest.fixture(scope="module")
def loaded(tiny: Path):  # type: ignore[no-untyped-def]
    return FAMILY.load(tiny, "cpu")


@pytest.mark.parametrize("detail", ["low", "high"])
def test_processor_writes_the_formula_count(loaded, detail) -> None:  # type: ignore[no-untyped-def]
    model, processor = loaded
    for width, height in SIZES:
        image = Image.new("RGB", (width, height), (30, 120, 200))
        inputs = processor(
            text="<image>\nhi",
            images=[image],
            return_tensors="pt",
            **FAMILY.processor_kwargs(detail),
        )
        placed = int((inputs["input_ids"] == model.config.image_token_id).sum()) + 2
        assert placed == FAMILY.image_tokens(width, height, detail), (width, height)
    assert FAMILY.image_tokens(2048, 2048, "low") == 258


def test_tiny_prefills_and_decodes_in_a_batch(loaded) -> None:  # type: ignore[no-untyped-def]
    model, processor = loaded
    image = Image.new("RGB", (640, 480), (200, 10, 10))
    first = prefill(FAMILY, model, processor, "describe the image", [image], "low")
    second = prefill(FAMILY, model, processor, "what color is it", [image], "high")
    together = decode_together(model, [first[1], second[1]], steps=4)
    alone = [decode_together(model, [out], steps=4)[0] for out in (first[1], second[1])]
    assert together == alone


def test_weight_names_are_opengvlabs(tiny: Path) -> None:
    names = set(safe_open(tiny / "model.safetensors", "pt").keys())
    pattern = re.compile(
        r"(vision_model\.(embeddings|encoder\.layers\.\d+)\.|mlp1\.[013]\."
        r"|language_model\.(model\.|lm_head\.)).+"
    )
    assert all(pattern.fullmatch(n) for n in names)
    assert "vision_model.encoder.layers.0.attn.qkv.weight" in names
    assert "vision_model.embeddings.class_embedding" in names
    config = json.loads((tiny / "config.json").read_text())
    assert config["model_type"] == "internvl_chat" and config["template"] == "Hermes-2"
    assert config["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert not list(tiny.glob("*.py"))
    assert family_for_checkpoint(tiny) is FAMILY


def _tiny_chat(llm: dict[str, object]) -> InternVLChatConfig:
    dims = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
    }
    text = {
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 1,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "vocab_size": 50,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "pad_token_id": 0,
    }
    return InternVLChatConfig.from_dict(chat_config("t", {**text, **llm}, dims, "internlm2-chat"))


@pytest.mark.parametrize(
    "llm",
    [
        {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": False},
        {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3"},
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
    ],
)
def test_conversion_round_trip(llm: dict[str, object]) -> None:
    chat = _tiny_chat(llm)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(hf_config(chat, image_token_id=3))
    original = to_original(model.state_dict(), chat)
    if llm["model_type"] == "internlm2":
        assert "language_model.model.layers.0.attention.wqkv.weight" in original
        assert "language_model.model.tok_embeddings.weight" in original
        assert "language_model.output.weight" in original
    back = to_hf(original, chat)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_internlm2_wqkv_is_grouped_per_kv_head() -> None:
    # 8 query heads, 2 kv heads, head_dim 8: rows go [q0..q3, k0, v0, q4..q7, k1, v1] per head.
    chat = _tiny_chat({"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2"})
    head = torch.arange(12).repeat_interleave(8).float().unsqueeze(1).expand(-1, 64)
    state = to_hf({"language_model.model.layers.0.attention.wqkv.weight": head}, chat)
    prefix = "model.language_model.layers.0.self_attn."
    assert state[prefix + "q_proj.weight"][::8, 0].tolist() == [0, 1, 2, 3, 6, 7, 8, 9]
    assert state[prefix + "k_proj.weight"][::8, 0].tolist() == [4, 10]
    assert state[prefix + "v_proj.weight"][::8, 0].tolist() == [5, 11]


def test_templates_follow_opengvlab_conversations() -> None:
    from jinja2 import Template

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
    ]
    chatml = Template(chat_template_for("internlm2-chat")).render(
        messages=messages, add_generation_prompt=True
    )
    assert chatml == (
        "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\n<image>\nHi"
        "<|im_end|><|im_start|>assistant\n"
    )
    phi3 = Template(chat_template_for("phi3-chat")).render(
        messages=messages[1:], add_generation_prompt=True
    )
    assert phi3.startswith("<|system|>\n") and phi3.endswith(
        "<|end|><|user|>\n<image>\nHi<|end|><|assistant|>\n"
    )


def test_full_size_internvl2_8b(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = FAMILY.full_config(tmp_path / "8b")  # type: ignore[attr-defined]
    config = json.loads((out / "config.json").read_text())
    llm = config["llm_config"]
    assert (
        llm["num_hidden_layers"],
        llm["hidden_size"],
        llm["num_attention_heads"],
        llm["num_key_value_heads"],
        llm["intermediate_size"],
        llm["vocab_size"],
    ) == (32, 4096, 32, 8, 14336, 92553)
    assert {k: config["vision_config"][k] for k in INTERNVIT_300M} == INTERNVIT_300M
    assert llm == INTERNLM2_5_7B
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 92553
    assert tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>", "<IMG_CONTEXT>"]) == [
        92542,
        92543,
        92546,
    ]
