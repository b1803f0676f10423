"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP ViT-L/14-336 and a Llama-2 language model.

Every image is resized and center-cropped to 336x336 and becomes (336/14)^2 = 576 tokens, whatever
its size or detail.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from models.base import Detail, ModelFamily, content_template

CLIP_IMAGE_SIZE = 336
CLIP_PATCH_SIZE = 14
#: Tokens one 336x336 CLIP crop yields (the CLS token is dropped by the "default" strategy).
CLIP_GRID_TOKENS = (CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2


def clip_vision_config() -> dict[str, object]:
    """CLIP ViT-L/14-336 geometry with tiny widths, shared by the LLaVA families."""
    from models.tiny import TINY_VISION

    return {
        "model_type": "clip_vision_model",
        "image_size": CLIP_IMAGE_SIZE,
        "patch_size": CLIP_PATCH_SIZE,
        "projection_dim": TINY_VISION["hidden_size"],
        **TINY_VISION,
    }


def llava_tokenizer():  # type: ignore[no-untyped-def]
    """The tiny tokenizer with LLaVA's special tokens (``<image>`` stands for one image)."""
    from models.tiny import train_tokenizer

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

    def build_tiny(self, out_dir: Path) -> Path:
        """A tiny Llama + CLIP-336 LLaVA checkpoint."""
        from transformers import (
            CLIPImageProcessor,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        from models.tiny import TINY_TEXT, save_checkpoint

        tokenizer = llava_tokenizer()
        config = LlavaConfig(
            vision_config=clip_vision_config(),
            text_config={"model_type": "llama", "vocab_size": len(tokenizer), **TINY_TEXT},
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": CLIP_IMAGE_SIZE},
            crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=CLIP_PATCH_SIZE,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=self.chat_template,
        )
        return save_checkpoint(
            out_dir,
            LlavaForConditionalGeneration,
            config,
            processor,
            eos_token_id=tokenizer.eos_token_id,
        )
