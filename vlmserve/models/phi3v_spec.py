"""Phi-3-Vision's fixed numbers, light to import (no torch): the HD crop geometry and its
image-token rule, Phi-3-mini's sizes and its special tokens.

An image is turned so that its long side is horizontal, scaled so that ``cols`` 336-pixel crops
span its width, where ``cols`` is the largest number with
``cols * ceil(cols / aspect) <= num_crops``, padded with white to a whole number of 336-pixel
rows, and turned back. CLIP sees every 336x336
crop plus one 336x336 "global" copy of the whole padded image. After a 2x2 merge each crop is 12x12
tokens; every row of 12 gets a separator, and one more separator sits between the crops and the
global image, so an image of ``rows`` x ``cols`` crops takes
``(rows * cols + 1) * 144 + 1 + (rows + 1) * 12`` tokens (the rule in Microsoft's
``image_processing_phi3_v.py``, ``calc_num_image_tokens_from_image_size``).
"""

from __future__ import annotations

import math

CROP_SIZE = 336
#: Tokens per crop after the 2x2 merge of CLIP's 24x24 patch grid.
CROP_TOKENS = 144
#: Tokens per crop row (and the separator count per row of the global image).
ROW_TOKENS = 12
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Microsoft's default for Phi-3-Vision's checkpoints (``preprocessor_config.json``).
DEFAULT_NUM_CROPS = 16


def _scale(aspect: float, num_crops: int) -> int:
    """Crops across the long side: the largest ``s`` with ``s * ceil(s / aspect) <= num_crops``."""
    scale = 1
    while (scale + 1) * math.ceil((scale + 1) / aspect) <= num_crops:
        scale += 1
    return scale


def hd_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(width, height) of the image after the HD resize and padding: multiples of 336."""
    transposed = width < height
    long_side, short_side = (height, width) if transposed else (width, height)
    aspect = long_side / short_side
    new_long = _scale(aspect, num_crops) * CROP_SIZE
    new_short = int(new_long / aspect)
    padded_short = math.ceil(new_short / CROP_SIZE) * CROP_SIZE
    return (padded_short, new_long) if transposed else (new_long, padded_short)


def crop_grid(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(rows, cols) of 336-pixel crops the image becomes."""
    new_width, new_height = hd_size(width, height, num_crops)
    return new_height // CROP_SIZE, new_width // CROP_SIZE


def tokens_for_grid(rows: int, cols: int) -> int:
    """Image tokens for a ``rows`` x ``cols`` crop grid plus the global image and separators."""
    return (rows * cols + 1) * CROP_TOKENS + 1 + (rows + 1) * ROW_TOKENS


def image_tokens(width: int, height: int, num_crops: int) -> int:
    """Prompt tokens one ``width`` x ``height`` image takes with ``num_crops``."""
    return tokens_for_grid(*crop_grid(width, height, num_crops))


def max_image_tokens(num_crops: int) -> int:
    """The most tokens any image can take: the costliest grid with ``rows * cols <= num_crops``.

    Tall images cost most because separators are per row (16x1 crops: 2,653 tokens at 16 crops).
    """
    return max(
        tokens_for_grid(rows, cols)
        for rows in range(1, num_crops + 1)
        for cols in range(1, num_crops // rows + 1)
    )


#: Numbers a language model is sized by, per checkpoint, from their public config.json files.
PHI3_MINI = {
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
}

_SPECIAL_IDS = {
    32000: "<|endoftext|>",
    32001: "<|assistant|>",
    32006: "<|system|>",
    32007: "<|end|>",
    32010: "<|user|>",
    32044: "<|image|>",
}


def special_tokens(vocab_size: int = PHI3_MINI["vocab_size"]) -> list[str]:
    """Tokens 32000 .. ``vocab_size - 1`` of Phi-3's vocabulary; unnamed ones are placeholders."""
    names, placeholder = [], 0
    for token_id in range(32000, vocab_size):
        if token_id in _SPECIAL_IDS:
            names.append(_SPECIAL_IDS[token_id])
        else:
            placeholder += 1
            names.append(f"<|placeholder{placeholder}|>")
    return names
