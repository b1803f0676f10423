"""Phi-3-Vision on transformers' Phi-3 and CLIP building blocks, reading Microsoft's checkpoints.

Weight names are the original ones: ``model.embed_tokens``, ``model.layers.*`` (Phi-3's fused
``qkv_proj`` and ``gate_up_proj``), ``model.norm``, ``lm_head`` and, for the image side,
``model.vision_embed_tokens.img_processor.vision_model.*`` (CLIP ViT-L/14-336),
``model.vision_embed_tokens.{glb_GN,sub_GN}`` and
``model.vision_embed_tokens.img_projection.{0,2}``.
The config is Microsoft's ``phi3_v`` config, read by :class:`Phi3VConfig` without running hub code.
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from vlmserve.models.phi3v_spec import CROP_SIZE

#: The id vLLM's Phi-3-V writes at image positions; Microsoft's tokenizer has ``<|image|>`` there.
IMAGE_TOKEN_ID = 32044
CLIP_LAYERS = 24
MERGED_SIDE = 12


def clip_l14_336(num_layers: int) -> CLIPVisionConfig:
    """CLIP ViT-L/14-336, which Phi-3-V names only as ``openai/clip-vit-large-patch14-336``."""
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=num_layers,
        image_size=CROP_SIZE,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


@strict(accept_kwargs=True)
class Phi3VConfig(Phi3Config):
    """Microsoft's ``phi3_v`` config: Phi-3's fields plus ``embd_layer`` and ``img_processor``."""

    model_type = "phi3_v"
    embd_layer: dict | None = None
    img_processor: dict | None = None

    def convert_rope_params_to_dict(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """Phi-3's "su" scaling; transformers 5 wants the original context inside it."""
        kwargs = super().convert_rope_params_to_dict(**kwargs)
        assert isinstance(self.rope_parameters, dict)
        if self.rope_parameters.get("rope_type") == "longrope":
            self.rope_parameters.setdefault(
                "original_max_position_embeddings", self.original_max_position_embeddings
            )
        return kwargs


def features_layers(img_processor: dict[str, Any]) -> int:
    """CLIP layers to run: the original takes ``hidden_states[layer_idx]`` of a 24-layer CLIP."""
    layer_idx = int(img_processor.get("layer_idx", -2))
    return layer_idx if layer_idx >= 0 else CLIP_LAYERS + layer_idx + 1


class ClipHolder(nn.Module):
    """Holds CLIP under ``vision_model``: the original (transformers 4) CLIPVisionModel nesting,
    which Microsoft's weight names keep and transformers 5's flattened class no longer has."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionModel(config)


class Phi3VImageEmbedding(nn.Module):
    """CLIP features of the global image and the crops, merged 2x2, laid out with separators and
    projected to the language model's width (``hd_transform_order: sub_glb``)."""

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        img_processor = config.img_processor or {}
        self.image_dim_out = int(img_processor.get("image_dim_out", 1024))
        self.img_processor = ClipHolder(clip_l14_336(features_layers(img_processor)))
        merged = self.image_dim_out * 4
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, merged))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, merged))
        self.img_projection = nn.Sequential(
            nn.Linear(merged, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )

    def _merged_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 12, 12, 4C) features: CLIP patch features with each 2x2 block concatenated."""
        features = self.img_processor.vision_model(pixel_values=crops).last_hidden_state[:, 1:]
        n, _, c = features.shape
        side = MERGED_SIDE
        return (
            features.reshape(n, side, 2, side, 2, c)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(n, side, side, 4 * c)
        )

    def _with_row_separators(self, grid: torch.Tensor) -> torch.Tensor:
        """(rows, cols, D) -> (rows * (cols + 1), D): ``sub_GN`` after every row."""
        separators = self.sub_GN[0].expand(grid.shape[0], 1, -1)
        return torch.cat([grid, separators], dim=1).reshape(-1, grid.shape[-1])

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """One (tokens, hidden) tensor per image, in prompt order."""
        grids = [(int(h) // CROP_SIZE, int(w) // CROP_SIZE) for h, w in image_sizes.tolist()]
        # Padding crops are skipped: only the global view and the real crops go through CLIP.
        crops = torch.cat([pixel_values[i, : 1 + r * c] for i, (r, c) in enumerate(grids)])
        weight = self.img_projection[0].weight
        assert isinstance(weight, torch.Tensor)
        merged = self._merged_crops(crops.to(weight.dtype)).split([1 + r * c for r, c in grids])
        outputs = []
        for features, (rows, cols) in zip(merged, grids, strict=True):
            side = MERGED_SIDE
            sub = (
                features[1:]
                .reshape(rows, cols, side, side, -1)
                .permute(0, 2, 1, 3, 4)
                .reshape(rows * side, cols * side, -1)
            )
            tokens = torch.cat(
                [
                    self._with_row_separators(sub),
                    self.glb_GN[0],
                    self._with_row_separators(features[0]),
                ]
            )
            outputs.append(self.img_projection(tokens))
        return outputs


class Phi3VForCausalLM(Phi3ForCausalLM):
    """Phi-3-Vision: image features replace the ``<|image|>`` (or negative) ids, then Phi-3 runs."""

    config_class = Phi3VConfig
    _keys_to_ignore_on_load_unexpected = [
        r"vision_embed_tokens\.img_processor\.vision_model\.encoder\.layers\.\d+\.",
        r"vision_embed_tokens\.img_processor\.vision_model\.post_layernorm\.",
        r"vision_embed_tokens\.wte\.",
    ]

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__(config)
        self.model.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.image_token_id = int(getattr(config, "image_token_id", None) or IMAGE_TOKEN_ID)

    def _embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_sizes: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings with every image position holding its image feature."""
        is_image = (input_ids == self.image_token_id) | (input_ids < 0)
        embeds = self.model.embed_tokens(input_ids.clamp(min=0))
        features = torch.cat(self.model.vision_embed_tokens(pixel_values, image_sizes))
        if int(is_image.sum()) != features.shape[0]:
            raise ValueError(
                f"{int(is_image.sum())} image positions in the prompt for {features.shape[0]} "
                "image features; render the prompt with this model's processor"
            )
        mask = is_image.unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Prefill with images (``pixel_values``, ``image_sizes``) or decode on token ids."""
        if pixel_values is not None and input_ids is not None:
            assert image_sizes is not None, "pixel_values come with image_sizes"
            inputs_embeds = self._embed(input_ids, pixel_values, image_sizes)
            input_ids = None
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
