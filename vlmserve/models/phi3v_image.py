"""Phi-3-Vision's HD image transform and image processor on torch.

The crop geometry and the image-token rule it follows are in :mod:`vlmserve.models.phi3v_spec`,
which imports no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from vlmserve.models.phi3v_spec import (
    CLIP_MEAN,
    CLIP_STD,
    CROP_SIZE,
    CROP_TOKENS,
    hd_size,
    image_tokens,
    tokens_for_grid,
)


def hd_transform(image: Image.Image, num_crops: int) -> Image.Image:
    """Resize and white-pad an RGB image to its HD size, padding the short side evenly."""
    width, height = image.size
    target_w, target_h = hd_size(width, height, num_crops)
    transposed = width < height
    long_side, short_side = (height, width) if transposed else (width, height)
    scaled_long = target_h if transposed else target_w
    scaled_short = int(scaled_long / (long_side / short_side))
    size = (scaled_short, scaled_long) if transposed else (scaled_long, scaled_short)
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
