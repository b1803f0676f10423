"""OpenGVLab's InternVL-2 weights <-> transformers' ``InternVLForConditionalGeneration``.

The original layout: ``vision_model.*`` (InternViT with a packed ``attn.qkv``), ``mlp1.{0,1,3}``
(LayerNorm, Linear, GELU, Linear) and ``language_model.*`` in the language model's own naming.
InternLM2 has no transformers class; it is a Llama with renamed weights and a packed ``wqkv`` laid
out per key/value head as ``[q_1 .. q_g, k, v]``, so it maps onto transformers' Llama. Qwen2,
Phi-3 and Llama-3 language models keep their names under ``model.language_model``.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import InternVLConfig

from vlmserve.models.internvl2_config import LM_MODEL_TYPES, InternVLChatConfig

_VISION = [
    (r"embeddings\.class_embedding$", "embeddings.cls_token"),
    (r"embeddings\.position_embedding$", "embeddings.position_embeddings"),
    (r"embeddings\.patch_embedding\.", "embeddings.patch_embeddings.projection."),
    (r"encoder\.layers\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.projection_layer."),
    (r"encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.", r"encoder.layer.\1.attention.\2."),
    (r"encoder\.layers\.(\d+)\.mlp\.", r"encoder.layer.\1.mlp."),
    (r"encoder\.layers\.(\d+)\.norm1\.", r"encoder.layer.\1.layernorm_before."),
    (r"encoder\.layers\.(\d+)\.norm2\.", r"encoder.layer.\1.layernorm_after."),
    (r"encoder\.layers\.(\d+)\.ls1$", r"encoder.layer.\1.lambda_1"),
    (r"encoder\.layers\.(\d+)\.ls2$", r"encoder.layer.\1.lambda_2"),
]
_INTERNLM2 = [
    (r"^tok_embeddings\.", "embed_tokens."),
    (r"\.attention\.wo\.", ".self_attn.o_proj."),
    (r"\.feed_forward\.w1\.", ".mlp.gate_proj."),
    (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
    (r"\.feed_forward\.w2\.", ".mlp.down_proj."),
    (r"\.attention_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
]
_PROJECTOR = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_LM_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "hidden_act",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def _rename(name: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def text_config(chat: InternVLChatConfig) -> dict[str, Any]:
    """transformers config dict of the equivalent language model (InternLM2 -> Llama)."""
    llm = chat.llm_config.to_dict()
    arch = chat.lm_architecture
    if arch not in LM_MODEL_TYPES:
        raise ValueError(f"InternVL language model {arch!r} is not supported")
    if arch == "InternLM2ForCausalLM":
        fields = {k: llm[k] for k in _LM_KEYS if llm.get(k) is not None}
        fields["attention_bias"] = bool(llm.get("bias", False))
    else:
        dropped = (
            "architectures",
            "auto_map",
            "_name_or_path",
            "model_type",
            "transformers_version",
        )
        fields = {k: v for k, v in llm.items() if k not in dropped}
    return {**fields, "model_type": LM_MODEL_TYPES[arch], "tie_word_embeddings": False}


def hf_config(chat: InternVLChatConfig, image_token_id: int) -> InternVLConfig:
    """transformers' ``InternVLConfig`` for an original ``internvl_chat`` config."""
    vision = chat.vision_config
    size = chat.force_image_size or vision.image_size
    return InternVLConfig(
        vision_config={
            "model_type": "internvl_vision",
            "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "attention_bias": bool(getattr(vision, "qkv_bias", True)),
            "use_qk_norm": bool(getattr(vision, "qk_normalization", False)),
            "norm_type": getattr(vision, "norm_type", "layer_norm"),
            "layer_norm_eps": getattr(vision, "layer_norm_eps", 1e-6),
            "hidden_act": getattr(vision, "hidden_act", "gelu"),
            "image_size": [size, size],
            "patch_size": [vision.patch_size, vision.patch_size],
        },
        text_config=text_config(chat),
        image_token_id=image_token_id,
        image_seq_length=int((size // vision.patch_size) ** 2 * chat.downsample_ratio**2),
        downsample_ratio=chat.downsample_ratio,
        vision_feature_layer=chat.select_layer,
        tie_word_embeddings=False,
    )


def _split_internlm2_wqkv(weight: torch.Tensor, heads: int, kv_heads: int) -> list[torch.Tensor]:
    """[q, k, v] rows of InternLM2's per-kv-head packed ``wqkv``."""
    groups = heads // kv_heads
    packed = weight.reshape(kv_heads, groups + 2, -1, weight.shape[-1])
    head_dim = packed.shape[2]
    q = packed[:, :groups].reshape(heads * head_dim, -1)
    k = packed[:, groups].reshape(kv_heads * head_dim, -1)
    v = packed[:, groups + 1].reshape(kv_heads * head_dim, -1)
    return [q, k, v]


def _pack_internlm2_wqkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kv_heads: int
) -> torch.Tensor:
    """Inverse of :func:`_split_internlm2_wqkv`."""
    head_dim, hidden = q.shape[0] // heads, q.shape[-1]
    q = q.reshape(kv_heads, heads // kv_heads, head_dim, hidden)
    k, v = k.reshape(kv_heads, 1, head_dim, hidden), v.reshape(kv_heads, 1, head_dim, hidden)
    return torch.cat([q, k, v], dim=1).reshape(-1, hidden)


def to_hf(state: dict[str, torch.Tensor], chat: InternVLChatConfig) -> dict[str, torch.Tensor]:
    """Original weight names and layout -> ``InternVLForConditionalGeneration``'s."""
    internlm2 = chat.lm_architecture == "InternLM2ForCausalLM"
    llm = chat.llm_config
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.startswith("vision_model."):
            rest = _rename(name.removeprefix("vision_model."), _VISION)
            if match := re.fullmatch(r"encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)", rest):
                layer, kind = match.groups()
                for part, chunk in zip("qkv", tensor.chunk(3), strict=True):
                    out[
                        f"model.vision_tower.encoder.layer.{layer}.attention.{part}_proj.{kind}"
                    ] = chunk
                continue
            out[f"model.vision_tower.{rest}"] = tensor
        elif match := re.fullmatch(r"mlp1\.(\d)\.(weight|bias)", name):
            out[f"model.multi_modal_projector.{_PROJECTOR[match[1]]}.{match[2]}"] = tensor
        elif name in ("language_model.lm_head.weight", "language_model.output.weight"):
            out["lm_head.weight"] = tensor
        elif name.startswith("language_model.model."):
            rest = name.removeprefix("language_model.model.")
            if internlm2 and rest.endswith(".attention.wqkv.weight"):
                prefix = rest.removesuffix(".attention.wqkv.weight")
                parts = _split_internlm2_wqkv(
                    tensor, llm.num_attention_heads, llm.num_key_value_heads
                )
                for part, chunk in zip("qkv", parts, strict=True):
                    out[f"model.language_model.{prefix}.self_attn.{part}_proj.weight"] = chunk
                continue
            out[f"model.language_model.{_rename(rest, _INTERNLM2) if internlm2 else rest}"] = tensor
        else:
            raise ValueError(f"unexpected InternVL weight {name!r}")
    return out


def _flip(rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Rules that undo ``rules`` (each is a plain rename with at most the groups \\1, \\2)."""
    flipped = []
    for pattern, replacement in rules:
        groups = re.findall(r"\([^)]*\)", pattern)
        back_pattern = re.escape(replacement.replace(r"\1", "\0").replace(r"\2", "\1"))
        back_pattern = back_pattern.replace("\0", groups[0] if groups else "")
        back_pattern = back_pattern.replace("\1", groups[1] if len(groups) > 1 else "")
        back = pattern
        for i, group in enumerate(groups, 1):
            back = back.replace(group, f"\\{i}", 1)
        back = back.replace("\\.", ".").lstrip("^").rstrip("$")
        anchor = ("^" if pattern.startswith("^") else ""), ("$" if pattern.endswith("$") else "")
        flipped.append((anchor[0] + back_pattern + anchor[1], back))
    return flipped


def to_original(
    state: dict[str, torch.Tensor], chat: InternVLChatConfig
) -> dict[str, torch.Tensor]:
    """``InternVLForConditionalGeneration`` weights -> the original names (for tiny checkpoints)."""
    internlm2 = chat.lm_architecture == "InternLM2ForCausalLM"
    llm = chat.llm_config
    vision_back, lm_back = _flip(_VISION), _flip(_INTERNLM2)
    fused: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if match := re.fullmatch(r"(.*)\.(q|k|v)_proj\.(weight|bias)", name):
            fused.setdefault(f"{match[1]}.{match[3]}", {})[match[2]] = tensor
            continue
        if name.startswith("model.vision_tower."):
            out[
                "vision_model." + _rename(name.removeprefix("model.vision_tower."), vision_back)
            ] = tensor
        elif name.startswith("model.multi_modal_projector."):
            part, kind = name.removeprefix("model.multi_modal_projector.").split(".")
            index = {v: k for k, v in _PROJECTOR.items()}[part]
            out[f"mlp1.{index}.{kind}"] = tensor
        elif name == "lm_head.weight":
            out[
                "language_model.output.weight" if internlm2 else "language_model.lm_head.weight"
            ] = tensor
        else:
            rest = name.removeprefix("model.language_model.")
            out["language_model.model." + (_rename(rest, lm_back) if internlm2 else rest)] = tensor
    for key, parts in fused.items():
        q, k, v = parts["q"], parts["k"], parts["v"]
        base, kind = key.rsplit(".", 1)
        if base.startswith("model.vision_tower."):
            layer = base.removeprefix("model.vision_tower.encoder.layer.").split(".")[0]
            out[f"vision_model.encoder.layers.{layer}.attn.qkv.{kind}"] = torch.cat([q, k, v])
        elif internlm2:
            layer_prefix = base.removeprefix("model.language_model.").removesuffix(".self_attn")
            out[f"language_model.model.{layer_prefix}.attention.wqkv.{kind}"] = (
                _pack_internlm2_wqkv(q, k, v, llm.num_attention_heads, llm.num_key_value_heads)
            )
        else:
            for part, tensor in zip("qkv", (q, k, v), strict=True):
                out[
                    f"language_model.model.{base.removeprefix('model.language_model.')}"
                    f".{part}_proj.{kind}"
                ] = tensor
    return out
