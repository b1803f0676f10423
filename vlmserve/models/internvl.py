"""InternVL in transformers' native format (``InternVLForConditionalGeneration``).

InternViT sees 448x448 tiles; pixel shuffle (scale 0.5) turns each tile's 32x32 patches into 256
tokens. An image is cut into the grid of 1..12 tiles whose aspect ratio is closest to its own, plus
a 448 thumbnail when there is more than one tile, and the tokens sit between ``<img>`` and
``</img>``. ``detail: low`` allows a single tile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from vlmserve.models.base import Detail, ModelFamily, content_template

TILE_SIZE = 448
PATCH_SIZE = 14
DOWNSAMPLE_RATIO = 0.5
TOKENS_PER_TILE = int((TILE_SIZE // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO**2)
MAX_TILES = 12
#: ``<img>`` and ``</img>`` around each image's tokens.
IMAGE_DELIMITERS = 2


def tile_grid(width: int, height: int, max_tiles: int = MAX_TILES) -> tuple[int, int]:
    """(columns, rows) of the tile grid closest to the image's aspect ratio.

    Ties go to the larger grid while the image is large enough to fill more than half of it.
    """
    grids = sorted(
        (
            (cols, rows)
            for cols in range(1, max_tiles + 1)
            for rows in range(1, max_tiles + 1)
            if cols * rows <= max_tiles
        ),
        key=lambda g: g[0] * g[1],
    )
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * TILE_SIZE * TILE_SIZE * cols * rows:
            best = (cols, rows)
    return best


def num_tiles(width: int, height: int, max_tiles: int = MAX_TILES) -> int:
    """Tiles an image becomes: its grid, plus the thumbnail when the grid has more than one."""
    cols, rows = tile_grid(width, height, max_tiles)
    return cols * rows + (1 if cols * rows > 1 else 0)


def tiled_size(width: int, height: int, max_tiles: int) -> tuple[int, int]:
    """(width, height) the image is squashed to before it is cut into 448-pixel tiles."""
    cols, rows = tile_grid(width, height, max_tiles)
    return cols * TILE_SIZE, rows * TILE_SIZE


def max_tiles_for(detail: Detail) -> int:
    """The tile budget per image at ``detail``."""
    return 1 if detail == "low" else MAX_TILES


class InternVL(ModelFamily):
    """InternVL on a Qwen2 language model with ChatML prompts, 258 to 3,330 tokens per image."""

    name: ClassVar[str] = "internvl"
    architectures: ClassVar[tuple[str, ...]] = ("InternVLForConditionalGeneration",)
    image_placeholder: ClassVar[str] = "<IMG_CONTEXT>"
    chat_template: ClassVar[str] = (
        "{%- for message in messages -%}<|im_start|>{{ message['role'] }}\n"
        + content_template("<IMG_CONTEXT>\n")
        + "<|im_end|>{{ '\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
    )

    def image_tokens(self, width: int, height: int, detail: Detail = "high") -> int:
        """256 per tile plus the two delimiters."""
        tiles = num_tiles(width, height, max_tiles_for(detail))
        return TOKENS_PER_TILE * tiles + IMAGE_DELIMITERS

    def max_image_tokens(self) -> int:
        """12 tiles and a thumbnail: 3,330."""
        return TOKENS_PER_TILE * (MAX_TILES + 1) + IMAGE_DELIMITERS

    def processed_size(self, width: int, height: int, detail: Detail = "high") -> tuple[int, int]:
        """The tile grid's canvas (the 448 thumbnail fits inside it)."""
        return tiled_size(width, height, max_tiles_for(detail))

    def processor_kwargs(self, detail: Detail) -> dict[str, Any]:
        """The tile budget, as the image processor's ``max_patches``."""
        return {"max_patches": max_tiles_for(detail)}

    def build_tiny(self, out_dir: Path) -> Path:
        """A tiny Qwen2 + InternViT-448 checkpoint in transformers' InternVL format."""
        from transformers import (
            GotOcr2ImageProcessor,
            InternVLConfig,
            InternVLForConditionalGeneration,
            InternVLProcessor,
            InternVLVideoProcessor,
        )

        from vlmserve.models.tiny import TINY_TEXT, TINY_VISION, save_checkpoint, train_tokenizer

        tokenizer = train_tokenizer(
            [
                "<unk>",
                "<|endoftext|>",
                "<|im_start|>",
                "<|im_end|>",
                "<img>",
                "</img>",
                "<IMG_CONTEXT>",
                "<video>",
            ],
            bos="<|im_start|>",
            eos="<|im_end|>",
            unk="<unk>",
            pad="<|endoftext|>",
            extra_special_tokens={
                "start_image_token": "<img>",
                "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>",
            },
        )
        config = InternVLConfig(
            vision_config={
                "model_type": "internvl_vision",
                "image_size": [TILE_SIZE, TILE_SIZE],
                "patch_size": [PATCH_SIZE, PATCH_SIZE],
                **TINY_VISION,
            },
            text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), **TINY_TEXT},
            image_token_id=tokenizer.context_image_token_id,
            downsample_ratio=DOWNSAMPLE_RATIO,
        )
        image_processor = GotOcr2ImageProcessor(
            size={"height": TILE_SIZE, "width": TILE_SIZE},
            crop_to_patches=True,
            min_patches=1,
            max_patches=MAX_TILES,
        )
        processor = InternVLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=InternVLVideoProcessor(),
            image_seq_length=TOKENS_PER_TILE,
            chat_template=self.chat_template,
        )
        return save_checkpoint(
            out_dir,
            InternVLForConditionalGeneration,
            config,
            processor,
            eos_token_id=tokenizer.eos_token_id,
        )
