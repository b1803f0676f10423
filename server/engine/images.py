"""Image-token accounting shared by every engine and the HTTP layer.

The count comes from the model family's own rule, so a request can be refused before any image
is processed: ``detail: low`` must lower it on families whose count depends on the image size.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.base import ModelFamily
from server.engine.base import ImageInput
from server.errors import BadRequestError


def count_image_tokens(family: ModelFamily, images: Sequence[ImageInput]) -> int:
    """Prompt tokens the request's images take, each at its own detail."""
    return sum(
        family.image_tokens(item.image.width, item.image.height, item.detail) for item in images
    )


def check_image_tokens(family: ModelFamily, images: Sequence[ImageInput], limit: int | None) -> int:
    """Count the images' tokens and refuse the request when they exceed ``limit``.

    Returns the count; ``limit=None`` means no cap. The error names ``messages`` because that is
    where the images are, and suggests ``detail: low`` when it would help.
    """
    total = count_image_tokens(family, images)
    if limit is None or total <= limit:
        return total
    low = sum(family.image_tokens(i.image.width, i.image.height, "low") for i in images)
    hint = ' Sending the images with "detail": "low" would help.' if low < total else ""
    raise BadRequestError(
        f"The request's images take {total} prompt tokens; this server allows at most {limit} "
        f"image tokens per request.{hint}",
        param="messages",
        code="too_many_image_tokens",
    )
