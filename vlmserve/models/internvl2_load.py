"""Load an original InternVL-2 folder into transformers' InternVL classes for the CPU engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    BatchFeature,
    GotOcr2ImageProcessor,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
)

from vlmserve.models.internvl import TILE_SIZE
from vlmserve.models.internvl2_config import InternVLChatConfig
from vlmserve.models.internvl2_convert import hf_config, to_hf

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


class InternVL2Processor(InternVLProcessor):
    """transformers' InternVL processor speaking the original prompt: ``<image>`` per image and
    ``max_dynamic_patch`` per call, as OpenGVLab's code and vLLM do."""

    def __call__(  # type: ignore[override]
        self,
        text: str | list[str] | None = None,
        images: Image.Image | list[Image.Image] | None = None,
        max_dynamic_patch: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Expand every ``<image>`` to the image's ``<img>...</img>`` tokens."""
        prompts = [text] if isinstance(text, str) else list(text or [])
        prompts = [p.replace("<image>", self.image_token) for p in prompts]
        if max_dynamic_patch is not None:
            kwargs["max_patches"] = max_dynamic_patch
        return super().__call__(text=prompts, images=images, **kwargs)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's safetensors files."""
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def build_processor(path: Path, chat: InternVLChatConfig) -> InternVL2Processor:
    """Tokenizer (plain transformers classes only) plus a tiling image processor."""
    from vlmserve.models.internvl2_template import chat_template_for

    tokenizer = AutoTokenizer.from_pretrained(
        path, trust_remote_code=False, extra_special_tokens=IMAGE_TOKENS
    )
    image_processor = GotOcr2ImageProcessor(
        size={"height": TILE_SIZE, "width": TILE_SIZE},
        crop_to_patches=bool(chat.dynamic_image_size),
        min_patches=chat.min_dynamic_patch,
        max_patches=chat.max_dynamic_patch,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    return InternVL2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(),
        image_seq_length=int(
            (TILE_SIZE // chat.vision_config.patch_size) ** 2 * chat.downsample_ratio**2
        ),
        chat_template=chat_template_for(chat.template or "Hermes-2"),
    )


def load_internvl2(path: Path, device: str) -> tuple[InternVLForConditionalGeneration, Any]:
    """``(model, processor)`` for an original InternVL-2 folder."""
    chat = InternVLChatConfig.from_dict(json.loads((path / "config.json").read_text()))
    processor = build_processor(path, chat)
    config = hf_config(chat, image_token_id=processor.image_token_id)
    dtype = getattr(torch, str(getattr(chat, "torch_dtype", None) or "float32").split(".")[-1])
    model = InternVLForConditionalGeneration(config)
    model.load_state_dict(to_hf(read_state_dict(path), chat), strict=True)
    generation = path / "generation_config.json"
    if generation.exists():
        model.generation_config.update(**json.loads(generation.read_text()))
    return model.to(device=device, dtype=dtype).eval(), processor  # type: ignore[call-arg]
