"""The files of a Phi-3-Vision checkpoint as Microsoft publishes them, at tiny or full size.

``config.json`` carries the original fields, ``auto_map`` included so other tools recognise the
folder, but no ``.py`` file is written: vlmserve reads these folders with its own classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlmserve.models.phi3v_spec import (
    CLIP_MEAN,
    CLIP_STD,
    CROP_TOKENS,
    DEFAULT_NUM_CROPS,
    PHI3_MINI,
    special_tokens,
)

# From microsoft/Phi-3-vision-128k-instruct's config.json ("su" rope, 48 factors = head_dim / 2).
LONG_FACTOR = [
    1.0299999713897705,
    1.0499999523162842,
    1.0499999523162842,
    1.0799999237060547,
    1.2299998998641968,
    1.2299998998641968,
    1.2999999523162842,
    1.4499999284744263,
    1.5999999046325684,
    1.6499998569488525,
    1.8999998569488525,
    2.859999895095825,
    3.68999981880188,
    5.419999599456787,
    5.489999771118164,
    5.489999771118164,
    9.09000015258789,
    11.579999923706055,
    15.65999984741211,
    15.769999504089355,
    15.789999961853027,
    18.360000610351562,
    21.989999771118164,
    23.079999923706055,
    30.009998321533203,
    32.35000228881836,
    32.590003967285156,
    35.56000518798828,
    39.95000457763672,
    53.840003967285156,
    56.20000457763672,
    57.95000457763672,
    59.29000473022461,
    59.77000427246094,
    59.920005798339844,
    61.190006256103516,
    61.96000671386719,
    62.50000762939453,
    63.3700065612793,
    63.48000717163086,
    63.48000717163086,
    63.66000747680664,
    63.850006103515625,
    64.08000946044922,
    64.760009765625,
    64.80001068115234,
    64.81001281738281,
    64.81001281738281,
]
SHORT_FACTOR = (
    [1.05] * 3
    + [1.1] * 3
    + [1.25] * 2
    + [1.4, 1.45, 1.55, 1.85, 1.9]
    + [2.0] * 19
    + [2.1, 2.1, 2.2]
    + [2.35] * 4
    + [2.4, 2.4, 2.65, 2.7, 2.9, 2.95]
    + [3.05] * 3
)
VARIANTS = {
    "phi-3-vision": "Phi-3-vision-128k-instruct",
    "phi-3.5-vision": "Phi-3.5-vision-instruct",
}


def config_json(
    name: str, text: dict[str, int], *, layer_idx: int | None = None, long_context: bool = True
) -> dict[str, Any]:
    """``config.json`` in Microsoft's layout for a language model of ``text``'s size."""
    img_processor: dict[str, Any] = {
        "image_dim_out": 1024,
        "model_name": "openai/clip-vit-large-patch14-336",
        "name": "clip_vision_model",
        "num_img_tokens": CROP_TOKENS,
    }
    if layer_idx is not None:
        img_processor["layer_idx"] = layer_idx
    rope = {"long_factor": LONG_FACTOR, "short_factor": SHORT_FACTOR, "type": "su"}
    return {
        "_name_or_path": name,
        "architectures": ["Phi3VForCausalLM"],
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_phi3_v.Phi3VConfig",
            "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
        },
        "bos_token_id": 1,
        "embd_layer": {
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        "embd_pdrop": 0.0,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "img_processor": img_processor,
        "initializer_range": 0.02,
        "max_position_embeddings": 131072,
        "model_type": "phi3_v",
        "original_max_position_embeddings": 4096,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        **({"rope_scaling": rope} if long_context else {}),
        "rope_theta": 10000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        **text,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_processing_files(out_dir: Path, chat_template: str, vocab_size: int) -> None:
    """Tokenizer (real ids for the special tokens), preprocessor and generation configs."""
    from vlmserve.models.tiny_vocab import padded_tokenizer

    tokenizer = padded_tokenizer(
        ["<unk>", "<s>", "</s>"],
        special_tokens(vocab_size),
        first_special_id=32000,
        bos="<s>",
        eos="<|endoftext|>",
        unk="<unk>",
        pad="<|endoftext|>",
        add_bos=True,
    )
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out_dir)
    _write_json(
        out_dir / "preprocessor_config.json",
        {
            "auto_map": {"AutoProcessor": "processing_phi3_v.Phi3VProcessor"},
            "do_convert_rgb": None,
            "image_mean": list(CLIP_MEAN),
            "image_processor_type": "Phi3VImageProcessor",
            "image_std": list(CLIP_STD),
            "num_crops": DEFAULT_NUM_CROPS,
            "num_img_tokens": CROP_TOKENS,
            "processor_class": "Phi3VProcessor",
        },
    )
    _write_json(
        out_dir / "generation_config.json",
        {
            "_from_model_config": True,
            "bos_token_id": 1,
            "eos_token_id": [32007, 32001, 32000],
            "pad_token_id": 32000,
        },
    )


def write_tiny(out_dir: Path, chat_template: str) -> Path:
    """Random weights under the original names; CLIP keeps ViT-L's width but no encoder layer."""
    from vlmserve.models.phi3v_modeling import Phi3VConfig, Phi3VForCausalLM
    from vlmserve.models.tiny import SEED, TINY_TEXT

    out_dir.mkdir(parents=True, exist_ok=True)
    text = {
        **TINY_TEXT,
        "num_key_value_heads": TINY_TEXT["num_attention_heads"],
        "vocab_size": PHI3_MINI["vocab_size"],
    }
    # layer_idx -25 of a 24-layer CLIP is its embedding output (no encoder layer runs), in the
    # original and in vLLM alike: a tiny vision tower that keeps the real patch geometry.
    config = config_json("vlmserve-tiny-phi3v", text, layer_idx=-25, long_context=False)
    torch.manual_seed(SEED)
    model = Phi3VForCausalLM(Phi3VConfig(**config)).eval()
    with torch.no_grad():
        for separator in (
            model.model.vision_embed_tokens.glb_GN,
            model.model.vision_embed_tokens.sub_GN,
        ):
            separator.normal_(std=0.02)
    model.to(torch.bfloat16).save_pretrained(out_dir)
    _write_json(out_dir / "config.json", config)
    write_processing_files(out_dir, chat_template, text["vocab_size"])
    _write_json(out_dir / "vlmserve_tiny.json", {"tiny": True})
    return out_dir


def write_full(out_dir: Path, variant: str, chat_template: str) -> Path:
    """A full-size Phi-3(.5)-Vision folder without weights, for ``load_format="dummy"``."""
    if variant not in VARIANTS:
        raise KeyError(f"unknown Phi-3-Vision variant {variant!r}; known: {', '.join(VARIANTS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "config.json", config_json(VARIANTS[variant], dict(PHI3_MINI)))
    write_processing_files(out_dir, chat_template, PHI3_MINI["vocab_size"])
    return out_dir
