"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP ViT-L/14-336 and a Llama-2 language model.

Every image is resized and center-cropped to 336x336 and becomes (336/14)^2 = 576 tokens, whatever
its size or detail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from vlmserve.models.base import Detail, ModelFamily, content_template

CLIP_IMAGE_SIZE = 336
CLIP_PATCH_SIZE = 14
#: Tokens one 336x336 CLIP crop yields (the CLS token is dropped by the "default" strategy).
CLIP_GRID_TOKENS = (CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2


def clip_vision_config() -> dict[str, object]:
    """CLIP ViT-L/14-336 geometry with tiny widths, shared by the LLaVA families."""
    from vlmserve.models.tiny import TINY_VISION

    return {
        "model_type": "clip_vision_model",
        "image_size": CLIP_IMAGE_SIZE,
        "patch_size": CLIP_PATCH_SIZE,
        "projection_dim": TINY_VISION["hidden_size"],
        **TINY_VISION,
    }


def llava_config_kwargs(tokenizer: Any, text_model_type: str, **text: Any) -> dict[str, Any]:
    """Config fields the tiny LLaVA-1.5 and LLaVA-NeXT share: CLIP-336 tower, tiny text model."""
    from vlmserve.models.tiny import TINY_TEXT

    return {
        "vision_config": clip_vision_config(),
        "text_config": {
            "model_type": text_model_type,
            "vocab_size": len(tokenizer),
            **TINY_TEXT,
            **text,
        },
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    }


def llava_processor_kwargs(tokenizer: Any, chat_template: str) -> dict[str, Any]:
    """Processor fields both LLaVA processors take: 576 tokens per 336 crop, CLS dropped."""
    return {
        "tokenizer": tokenizer,
        "patch_size": CLIP_PATCH_SIZE,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "chat_template": chat_template,
    }


def shortest_edge_size(width: int, height: int, edge: int) -> tuple[int, int]:
    """(width, height) after CLIP's resize of the short side to ``edge``, aspect kept."""
    if width <= height:
        return edge, int(edge * height / width)
    return int(edge * width / height), edge


#: The 336x336 crop both LLaVA image processors resize to.
CLIP_SIZES: dict[str, Any] = {
    "size": {"shortest_edge": CLIP_IMAGE_SIZE},
    "crop_size": {"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
}


def llava_tokenizer():  # type: ignore[no-untyped-def]
    """The tiny tokenizer with LLaVA's special tokens (``<image>`` stands for one image)."""
    from vlmserve.models.tiny import train_tokenizer

    return train_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        bos="<s>",
        eos="</s>",
        unk="<unk>",
        pad="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


class Llava15(ModelFamily):
    """LLaVA-1.5: Vicuna prompt format, a fixed 576 tokens per image."""

    name: ClassVar[str] = "llava"
    architectures: ClassVar[tuple[str, ...]] = ("LlavaForConditionalGeneration",)
    image_placeholder: ClassVar[str] = "<image>"
    chat_template: ClassVar[str] = (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}USER: {% elif message['role'] == 'assistant' -%}"
        "ASSISTANT: {% endif -%}"
        + content_template("<image>\n")
        + "{%- if message['role'] == 'assistant' -%}</s>{%- endif -%}{{ ' ' }}"
        "{%- endfor -%}{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
    )

    def image_tokens(self, width: int, height: int, detail: Detail = "high") -> int:
        """Always 576: the image is squashed to one 336x336 crop."""
        return CLIP_GRID_TOKENS

    def max_image_tokens(self) -> int:
        """576."""
        return CLIP_GRID_TOKENS

    def processed_size(self, width: int, height: int, detail: Detail = "high") -> tuple[int, int]:
        """The short side scaled to 336 before the center crop (up, for a thin strip)."""
        return shortest_edge_size(width, height, CLIP_IMAGE_SIZE)

    def build_tiny(self, out_dir: Path) -> Path:
        """A tiny Llama + CLIP-336 LLaVA checkpoint."""
        from transformers import (
            CLIPImageProcessor,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        from vlmserve.models.tiny import save_checkpoint

        tokenizer = llava_tokenizer()
        config = LlavaConfig(**llava_config_kwargs(tokenizer, "llama"))
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(**CLIP_SIZES),
            **llava_processor_kwargs(tokenizer, self.chat_template),
        )
        return save_checkpoint(
            out_dir,
            LlavaForConditionalGeneration,
            config,
            processor,
            eos_token_id=tokenizer.eos_token_id,
        )
