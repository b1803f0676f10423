"""LLaVA-1.6 / NeXT (``LlavaNextForConditionalGeneration``): CLIP-336 with "anyres" tiling.

An image is matched to the best grid of 336-pixel tiles among the pinpoints, each tile gives a
24x24 feature grid, the padding is cut back out ("unpadded"), one newline token closes each row,
and a 576-token view of the whole image comes first. ``detail: low`` shrinks the image to fit one
336 tile, which leaves the base view plus one tile.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

from PIL import Image

from vlmserve.models.base import Detail, ModelFamily, content_template
from vlmserve.models.llava import (
    CLIP_GRID_TOKENS,
    CLIP_IMAGE_SIZE,
    CLIP_PATCH_SIZE,
    CLIP_SIZES,
    llava_config_kwargs,
    llava_processor_kwargs,
    llava_tokenizer,
)

#: (height, width) canvases LLaVA-1.6 tiles an image onto, as in the released configs.
GRID_PINPOINTS: tuple[tuple[int, int], ...] = (
    (336, 672),
    (672, 336),
    (672, 672),
    (1008, 336),
    (336, 1008),
)


def best_canvas(height: int, width: int) -> tuple[int, int]:
    """The pinpoint that keeps the most of the image's resolution, then wastes the least."""
    best = GRID_PINPOINTS[0]
    best_kept, best_waste = -1, float("inf")
    for canvas_h, canvas_w in GRID_PINPOINTS:
        scale = min(canvas_w / width, canvas_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = canvas_w * canvas_h - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (canvas_h, canvas_w), kept, waste
    return best


def anyres_tokens(height: int, width: int) -> int:
    """Tokens for one image: base view + unpadded tile features + one newline per feature row."""
    canvas_h, canvas_w = best_canvas(height, width)
    side = CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE
    rows, cols = side * (canvas_h // CLIP_IMAGE_SIZE), side * (canvas_w // CLIP_IMAGE_SIZE)
    if width / height > cols / rows:
        kept_rows = int(round(height * (cols / width), 7))
        rows -= 2 * ((rows - kept_rows) // 2)
    else:
        kept_cols = int(round(width * (rows / height), 7))
        cols -= 2 * ((cols - kept_cols) // 2)
    return CLIP_GRID_TOKENS + rows * cols + rows


def fit_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) shrunk, aspect kept, so that neither edge exceeds ``side``."""
    if max(width, height) <= side:
        return width, height
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_within(image: Image.Image, side: int) -> Image.Image:
    """Shrink ``image`` (keeping its aspect) so that neither edge exceeds ``side``."""
    size = fit_size(image.width, image.height, side)
    return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)


class LlavaNext(ModelFamily):
    """LLaVA-1.6 on Mistral-7B's ``[INST]`` format, 1,176 to 2,928 tokens per image."""

    name: ClassVar[str] = "llava-next"
    architectures: ClassVar[tuple[str, ...]] = ("LlavaNextForConditionalGeneration",)
    image_placeholder: ClassVar[str] = "<image>"
    chat_template: ClassVar[str] = (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}[INST] "
        + content_template("<image>\n")
        + " [/INST]{%- elif message['role'] == 'assistant' -%}{{ ' ' }}"
        + content_template("")
        + "</s>{%- else -%}"
        + content_template("")
        + "{{ '\\n' }}{%- endif -%}{%- endfor -%}"
    )

    def image_tokens(self, width: int, height: int, detail: Detail = "high") -> int:
        """Anyres tokens of the image as :meth:`prepare_image` leaves it."""
        if detail == "low":
            width, height = fit_size(width, height, CLIP_IMAGE_SIZE)
        return anyres_tokens(height, width)

    def max_image_tokens(self) -> int:
        """The largest count over the pinpoint canvases (672x672 gives 2,928)."""
        return max(anyres_tokens(h, w) for h, w in GRID_PINPOINTS)

    def processed_size(self, width: int, height: int, detail: Detail = "high") -> tuple[int, int]:
        """The image fitted into its pinpoint canvas, and at least the 336x336 base view."""
        if detail == "low":
            width, height = fit_size(width, height, CLIP_IMAGE_SIZE)
        canvas_h, canvas_w = best_canvas(height, width)
        if canvas_w / width < canvas_h / height:
            fitted = (canvas_w, min(math.ceil(height * canvas_w / width), canvas_h))
        else:
            fitted = (min(math.ceil(width * canvas_h / height), canvas_w), canvas_h)
        return max(fitted[0], CLIP_IMAGE_SIZE), max(fitted[1], CLIP_IMAGE_SIZE)

    def prepare_image(self, image: Image.Image, detail: Detail) -> Image.Image:
        """``low`` fits the image into one 336 tile; other details keep it whole."""
        return fit_within(image, CLIP_IMAGE_SIZE) if detail == "low" else image

    def build_tiny(self, out_dir: Path) -> Path:
        """A tiny Mistral + CLIP-336 LLaVA-NeXT checkpoint with the released pinpoints."""
        from transformers import (
            LlavaNextConfig,
            LlavaNextForConditionalGeneration,
            LlavaNextImageProcessor,
            LlavaNextProcessor,
        )

        from vlmserve.models.tiny import save_checkpoint

        tokenizer = llava_tokenizer()
        pinpoints = [list(p) for p in GRID_PINPOINTS]
        # Mistral-7B-Instruct-v0.2, LLaVA-1.6's language model, has no sliding window.
        config = LlavaNextConfig(
            **llava_config_kwargs(tokenizer, "mistral", sliding_window=None),
            image_grid_pinpoints=pinpoints,
        )
        processor = LlavaNextProcessor(
            image_processor=LlavaNextImageProcessor(**CLIP_SIZES, image_grid_pinpoints=pinpoints),
            **llava_processor_kwargs(tokenizer, self.chat_template),
        )
        return save_checkpoint(
            out_dir,
            LlavaNextForConditionalGeneration,
            config,
            processor,
            eos_token_id=tokenizer.eos_token_id,
        )
