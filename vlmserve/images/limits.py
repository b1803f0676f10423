"""Limits that depend on the model family or on a request's images together.

Both are checked from image headers, before any image is decoded: the pixels an image becomes
after the family's own resize (LLaVA scales the short side up to 336 pixels, so a 1x60000 strip
would become 336x20,160,000), and the total pixels of a request's images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vlmserve.api.errors import BadRequestError
from vlmserve.engine.base import Detail
from vlmserve.images.decode import ImageLimits


class ResizeRule(Protocol):
    """What the checks need from a model family."""

    def processed_size(self, width: int, height: int, detail: Detail = "high") -> tuple[int, int]:
        """(width, height) covering every resize the family's processor makes of the image."""
        ...


def check_resized(
    rule: ResizeRule, size: tuple[int, int], detail: Detail, param: str, limits: ImageLimits
) -> None:
    """A 400 naming ``param`` when the image would become too many pixels in the processor."""
    if limits.max_resized_pixels is None:
        return
    width, height = rule.processed_size(size[0], size[1], detail)
    if width * height > limits.max_resized_pixels:
        raise BadRequestError(
            f"Image is {size[0]}x{size[1]} pixels; this model's image processor would scale it to "
            f"{width}x{height}, more than the {limits.max_resized_pixels}-pixel limit.",
            param=param,
            code="image_too_large",
        )


def check_request_pixels(
    sizes: Sequence[tuple[int, int]], params: Sequence[str], limits: ImageLimits
) -> None:
    """A 400 naming the image that takes the request's images past the total-pixel limit."""
    cap = limits.max_request_pixels
    if cap is None:
        return
    total = sum(w * h for w, h in sizes)
    if total <= cap:
        return
    running = 0
    for (width, height), param in zip(sizes, params, strict=True):
        running += width * height
        if running > cap:
            raise BadRequestError(
                f"The images in this request have {total} pixels in all, more than the "
                f"{cap}-pixel limit; send fewer or smaller images.",
                param=param,
                code="too_many_image_pixels",
            )
