"""A catalogue entry for any checkpoint folder, read from its ``config.json``.

The planner sizes a :class:`~vlmserve.models.catalog.CatalogModel`; for a model that is not in
the catalogue the same numbers come from the checkpoint: the language model's from ``text_config``
(LLaVA, InternVL), ``llm_config`` (InternVL-2's own format) or the top level (Phi-3-V), the vision
encoder's from ``vision_config`` (Phi-3-V names its CLIP tower in ``img_processor`` instead), and
the image-token rule from the family the ``architectures`` name.

Only ``config.json`` is read; nothing imports torch. Configs written by transformers leave out
values equal to their class's defaults (the hub's LLaVA-1.5 names only its vocabulary and context
in ``text_config``); for those, and only then, transformers' config class for the section's
``model_type`` supplies the defaults.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from vlmserve.models.architecture import CLIP_VIT_L_336_PHI3V, LanguageModel, VisionTower
from vlmserve.models.catalog import CatalogModel
from vlmserve.models.families import family_for_checkpoint

TEXT_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
)
VISION_KEYS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "image_size",
    "patch_size",
)


class CheckpointConfigError(ValueError):
    """``config.json`` lacks a number the planner needs."""


def _with_defaults(section: dict[str, Any], keys: tuple[str, ...], where: str) -> dict[str, Any]:
    """``section`` completed from transformers' defaults for its ``model_type`` if keys are
    missing."""
    missing = [key for key in keys if key not in section]
    if not missing:
        return section
    model_type = section.get("model_type")
    try:
        from transformers import AutoConfig

        defaults = AutoConfig.for_model(model_type).to_dict() if model_type else {}
    except (ValueError, KeyError):
        defaults = {}
    merged = {**defaults, **section}
    still_missing = [key for key in keys if key not in merged]
    if still_missing:
        raise CheckpointConfigError(
            f"config.json's {where} has no {', '.join(still_missing)} (model_type {model_type!r})"
        )
    return merged


def _square(value: int | list[int]) -> int:
    """An image or patch size given as ``n`` or ``[n, n]``."""
    return int(value[0] if isinstance(value, list) else value)


def language_model(config: dict[str, Any]) -> LanguageModel:
    """The decoder's numbers from ``text_config``, ``llm_config`` or the top level."""
    where = next((key for key in ("text_config", "llm_config") if key in config), "top level")
    raw = config[where] if where != "top level" else config
    text = _with_defaults(raw, TEXT_KEYS, where)
    heads = int(text["num_attention_heads"])
    return LanguageModel(
        name=str(text.get("_name_or_path") or text.get("model_type") or "language model"),
        layers=int(text["num_hidden_layers"]),
        hidden=int(text["hidden_size"]),
        heads=heads,
        kv_heads=int(text.get("num_key_value_heads") or heads),
        intermediate=int(text["intermediate_size"]),
        vocab=int(text["vocab_size"]),
        context=int(text["max_position_embeddings"]),
        explicit_head_dim=text.get("head_dim"),
        tie_embeddings=bool(text.get("tie_word_embeddings", False)),
        # Qwen2 always has q, k and v biases; Llama-style configs say so in attention_bias,
        # InternLM2 in bias.
        qkv_bias=bool(
            text.get("model_type") == "qwen2" or text.get("attention_bias") or text.get("bias")
        ),
    )


def vision_tower(config: dict[str, Any]) -> VisionTower:
    """The vision encoder's numbers, with InternVL's pixel-shuffle merge where it has one."""
    if "vision_config" not in config:
        processor = config.get("img_processor")
        if isinstance(processor, dict) and "clip-vit-large-patch14-336" in str(
            processor.get("model_name", "")
        ):
            # Phi-3-V's tower is fixed by name: CLIP ViT-L/14-336 with a 2x2 merge.
            width = int(processor.get("image_dim_out", CLIP_VIT_L_336_PHI3V.hidden))
            return dataclasses.replace(CLIP_VIT_L_336_PHI3V, hidden=width)
        raise CheckpointConfigError("config.json has no vision_config to size the image encoder")
    vision = _with_defaults(config["vision_config"], VISION_KEYS, "vision_config")
    ratio = config.get("downsample_ratio")
    return VisionTower(
        name=str(vision.get("model_type") or "vision encoder"),
        layers=int(vision["num_hidden_layers"]),
        hidden=int(vision["hidden_size"]),
        heads=int(vision["num_attention_heads"]),
        intermediate=int(vision["intermediate_size"]),
        image_size=_square(vision["image_size"]),
        patch_size=_square(vision["patch_size"]),
        merge=round(1 / float(ratio) ** 2) if ratio else 1,
    )


def checkpoint_model(path: Path, name: str, repo: str) -> CatalogModel:
    """The checkpoint in ``path`` as a catalogue entry called ``name``, served from ``repo``
    (what vLLM's ``model`` argument takes: the folder, or the Hugging Face repo id)."""
    config = json.loads((path / "config.json").read_text())
    family = family_for_checkpoint(path)
    return CatalogModel(name, repo, family.name, language_model(config), vision_tower(config))
