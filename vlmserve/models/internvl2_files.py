"""The files of an InternVL-2 checkpoint as OpenGVLab publishes them, at tiny or full size.

``config.json`` keeps the original fields and ``auto_map``; no ``.py`` file is written, and
vlmserve reads the folders with its own classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}
#: Tokens InternVL adds after the language model's vocabulary, in their order.
INTERNVL_TOKENS = [
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]
#: InternViT-300M-448px (OpenGVLab/InternVL2-8B config.json, ``vision_config``).
INTERNVIT_300M = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
}
#: InternLM2.5-7B-chat as InternVL2-8B's ``llm_config`` gives it.
INTERNLM2_5_7B = {
    "architectures": ["InternLM2ForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    },
    "model_type": "internlm2",
    "bias": False,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 2.0, "type": "dynamic"},
    "rope_theta": 1000000,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "tie_word_embeddings": False,
    "vocab_size": 92553,
}


def vision_config(dims: dict[str, int]) -> dict[str, Any]:
    """InternViT's ``vision_config`` as the originals write it."""
    return {
        "architectures": ["InternVisionModel"],
        "attention_dropout": 0.0,
        "drop_path_rate": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "image_size": 448,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-06,
        "model_type": "intern_vit_6b",
        "norm_type": "layer_norm",
        "num_channels": 3,
        "patch_size": 14,
        "qk_normalization": False,
        "qkv_bias": True,
        "use_flash_attn": False,
        **dims,
    }


def chat_config(
    name: str, llm: dict[str, Any], vision: dict[str, int], template: str
) -> dict[str, Any]:
    """``config.json`` of an ``internvl_chat`` checkpoint."""
    return {
        "_name_or_path": name,
        "architectures": ["InternVLChatModel"],
        "auto_map": AUTO_MAP,
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": 448,
        "llm_config": llm,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "model_type": "internvl_chat",
        "ps_version": "v2",
        "select_layer": -1,
        "template": template,
        "torch_dtype": "bfloat16",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "vision_config": vision_config(vision),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_tiny(out_dir: Path) -> Path:
    """InternVL2-1B's layout (Qwen2 language model) with tiny widths and random weights."""
    from transformers import InternVLForConditionalGeneration

    from vlmserve.models.internvl2_config import InternVLChatConfig
    from vlmserve.models.internvl2_convert import hf_config, to_original
    from vlmserve.models.internvl2_template import chat_template_for
    from vlmserve.models.tiny import SEED, TINY_TEXT, TINY_VISION, train_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *INTERNVL_TOKENS],
        bos="<|im_start|>",
        eos="<|im_end|>",
        unk="<|endoftext|>",
        pad="<|endoftext|>",
    )
    tokenizer.chat_template = chat_template_for("Hermes-2")
    tokenizer.save_pretrained(out_dir)
    llm = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        **TINY_TEXT,
        "vocab_size": len(tokenizer),
        "hidden_act": "silu",
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "tie_word_embeddings": False,
        "use_sliding_window": False,
    }
    config = chat_config("vlmserve-tiny-internvl2", llm, dict(TINY_VISION), "Hermes-2")
    chat = InternVLChatConfig.from_dict(config)
    torch.manual_seed(SEED)
    model = InternVLForConditionalGeneration(
        hf_config(chat, image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))  # type: ignore[arg-type]
    )
    state = {
        k: v.to(torch.bfloat16).contiguous()
        for k, v in to_original(model.state_dict(), chat).items()
    }
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    _write_json(out_dir / "config.json", config)
    _write_json(
        out_dir / "generation_config.json",
        {"eos_token_id": [llm["eos_token_id"]], "pad_token_id": llm["bos_token_id"]},
    )
    _write_json(out_dir / "vlmserve_tiny.json", {"tiny": True})
    return out_dir


def write_full(out_dir: Path, variant: str) -> Path:
    """A full-size InternVL2-8B folder without weights, for ``load_format="dummy"``.

    The tokenizer is vlmserve's: a byte-level BPE of InternLM2's vocabulary size with
    ``<|im_end|>`` (92542), ``<|im_start|>`` (92543) and InternVL's tokens (92544-92552) at their
    real ids, written as ``tokenizer.json`` so no ``tokenization_internlm2.py`` is needed.
    """
    from vlmserve.models.internvl2_template import chat_template_for
    from vlmserve.models.tiny_vocab import padded_tokenizer

    if variant != "internvl2-8b":
        raise KeyError(f"unknown InternVL-2 variant {variant!r}; known: internvl2-8b")
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = [
        "<|plugin|>",
        "<|interpreter|>",
        "<|action_end|>",
        "<|action_start|>",
        "<|im_end|>",
        "<|im_start|>",
        *INTERNVL_TOKENS,
    ]
    tokenizer = padded_tokenizer(
        ["<unk>", "<s>", "</s>"],
        specials,
        first_special_id=92538,
        bos="<s>",
        eos="</s>",
        unk="<unk>",
        pad="</s>",
        add_bos=True,
    )
    tokenizer.chat_template = chat_template_for("internlm2-chat")
    tokenizer.save_pretrained(out_dir)
    config = chat_config("OpenGVLab/InternVL2-8B", INTERNLM2_5_7B, INTERNVIT_300M, "internlm2-chat")
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", {"eos_token_id": [92542, 2]})
    return out_dir
