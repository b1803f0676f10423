"""Cache keys: a canonical form of a request, with each image named by its decoded content.

An image is hashed from its pixels, size and mode after decoding, so the same picture sent as a
data URL, an http URL or a re-encoded file is the same key; the request's other fields enter as
canonical JSON (sorted keys, no whitespace).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from PIL import Image


def image_digest(image: Image.Image) -> str:
    """SHA-256 of the decoded image: mode, size and raw pixels."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def is_deterministic(temperature: float | None, seed: int | None, n: int | None) -> bool:
    """Whether a request asks for one answer that does not vary: temperature 0 or a seed, n 1.

    An unset temperature is OpenAI's default of 1, so it is not deterministic.
    """
    return (n or 1) == 1 and (temperature == 0 or seed is not None)


def request_key(namespace: str, canonical: dict[str, Any], images: Iterable[str]) -> str:
    """The key of a request: its namespace (a model, the router), fields and image digests."""
    text = json.dumps(
        {"fields": canonical, "images": list(images)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return f"{namespace}:{hashlib.sha256(text.encode()).hexdigest()}"
