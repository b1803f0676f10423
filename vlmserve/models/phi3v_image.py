"""Phi-3-Vision's HD image transform and its image-token rule.

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
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

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


def hd_resize(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(width, height) the HD transform resizes the image to, before padding."""
    transposed = width < height
    long_side, short_side = (height, width) if transposed else (width, height)
    aspect = long_side / short_side
    new_long = _scale(aspect, num_crops) * CROP_SIZE
    new_short = int(new_long / aspect)
    return (new_short, new_long) if transposed else (new_long, new_short)


def hd_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(width, height) of the image after the HD resize and padding: multiples of 336."""
    new_width, new_height = hd_resize(width, height, num_crops)
    if width < height:
        return math.ceil(new_width / CROP_SIZE) * CROP_SIZE, new_height
    return new_width, math.ceil(new_height / CROP_SIZE) * CROP_SIZE


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


def hd_transform(image: Image.Image, num_crops: int) -> Image.Image:
    """Resize and white-pad an RGB image to its HD size, padding the short side evenly."""
    target_w, target_h = hd_size(image.width, image.height, num_crops)
    size = hd_resize(image.width, image.height, num_crops)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    pad_w, pad_h = target_w - size[0], target_h - size[1]
    border = (pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2)
    return ImageOps.expand(resized, border=border, fill=(255, 255, 255))


def _normalize(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float tensor normalised with CLIP's mean and std."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    mean, std = np.array(CLIP_MEAN, np.float32), np.array(CLIP_STD, np.float32)
    return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())


def image_to_crops(image: Image.Image, num_crops: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(global + crops, 3, 336, 336) pixels, padded with zero crops to ``num_crops + 1``, and the
    HD (height, width)."""
    hd = _normalize(hd_transform(image.convert("RGB"), num_crops))
    _, height, width = hd.shape
    rows, cols = height // CROP_SIZE, width // CROP_SIZE
    global_view = torch.nn.functional.interpolate(
        hd.unsqueeze(0), size=(CROP_SIZE, CROP_SIZE), mode="bicubic"
    )
    crops = (
        hd.reshape(3, rows, CROP_SIZE, cols, CROP_SIZE)
        .permute(1, 3, 0, 2, 4)
        .reshape(rows * cols, 3, CROP_SIZE, CROP_SIZE)
    )
    stacked = torch.cat([global_view, crops])
    padding = torch.zeros(num_crops + 1 - len(stacked), 3, CROP_SIZE, CROP_SIZE)
    return torch.cat([stacked, padding]), (height, width)


class Phi3VImageProcessor(BaseImageProcessor):
    """Phi-3-Vision's image processor: ``pixel_values``, ``image_sizes`` and ``num_img_tokens``.

    Reads ``preprocessor_config.json`` as Microsoft writes it (``num_crops``, ``num_img_tokens``,
    ``image_mean``, ``image_std``); ``num_crops`` can be overridden per call.
    """

    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        num_crops: int = 1,
        num_img_tokens: int = CROP_TOKENS,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        do_convert_rgb: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_crops = num_crops
        self.num_img_tokens = num_img_tokens
        self.image_mean = list(image_mean or CLIP_MEAN)
        self.image_std = list(image_std or CLIP_STD)
        self.do_convert_rgb = do_convert_rgb

    def calc_num_image_tokens_from_image_size(
        self, width: int, height: int, num_crops: int | None = None
    ) -> int:
        """Tokens for one image of this size (the name vLLM's Phi-3-V processing calls)."""
        return image_tokens(width, height, num_crops or self.num_crops)

    def preprocess(  # type: ignore[override]
        self,
        images: Image.Image | list[Image.Image],
        num_crops: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Crops of every image, stacked to (images, num_crops + 1, 3, 336, 336)."""
        crops = num_crops or self.num_crops
        image_list = images if isinstance(images, list) else [images]
        pixels, sizes = zip(*(image_to_crops(image, crops) for image in image_list), strict=True)
        data = {
            "pixel_values": torch.stack(pixels),
            "image_sizes": torch.tensor(sizes, dtype=torch.long),
            "num_img_tokens": [tokens_for_grid(h // CROP_SIZE, w // CROP_SIZE) for h, w in sizes],
        }
        return BatchFeature(data=data)
