"""What the benchmark sends: images (synthetic or from a folder), a prompt, and request bodies.

Images are encoded once, before any timing starts, so the client's JPEG/PNG and base64 work never
shows up in the measured latencies.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vlmserve.bench.photos import photo_pool

logger = logging.getLogger(__name__)

ImageFormat = Literal["png", "jpeg"]
#: What earlier assistant turns say in the multi-turn workload (the replies are not waited for).
ASSISTANT_TURN = "It shows a colourful scene with soft gradients."
FOLLOW_UP = "Tell me more about the colours."
_MIME_BY_SUFFIX = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}


@dataclass(frozen=True)
class EncodedImage:
    """One image ready to send: its data URL and what it is."""

    data_url: str
    width: int
    height: int
    mime: str
    nbytes: int


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Parse ``"336x336,1024x768"`` into ``[(336, 336), (1024, 768)]`` (width x height)."""
    sizes = []
    for item in text.split(","):
        width, sep, height = item.strip().lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise ValueError(f"image size must look like 336x336, got {item!r}")
        if int(width) < 1 or int(height) < 1:
            raise ValueError(f"image size must be positive, got {item!r}")
        sizes.append((int(width), int(height)))
    return sizes


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def synthetic_image(width: int, height: int, fmt: ImageFormat, seed: int) -> EncodedImage:
    """A random image: a smooth colour field with grain, so it compresses like a photo, not noise.

    Pure noise (what some tools send) makes PNGs several times larger than real pictures of the
    same size, which would turn an image benchmark into an upload benchmark.
    """
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-6, 7, smooth.shape, dtype=np.int16)
    pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {})
    )
    data = buffer.getvalue()
    mime = f"image/{fmt}"
    return EncodedImage(_data_url(data, mime), width, height, mime, len(data))


def synthetic_pool(
    sizes: list[tuple[int, int]], fmt: ImageFormat, count: int, seed: int = 0
) -> list[EncodedImage]:
    """``count`` distinct synthetic images cycling through ``sizes``.

    Distinct images keep servers' multimodal caches (vLLM hashes images) from turning repeated
    requests into cache hits.
    """
    return [
        synthetic_image(*sizes[i % len(sizes)], fmt, seed=seed + i) for i in range(max(count, 1))
    ]


def load_image_dir(folder: Path) -> list[EncodedImage]:
    """Every image file directly in ``folder``, sent as its own bytes (not re-encoded)."""
    images = []
    for path in sorted(folder.iterdir()):
        mime = _MIME_BY_SUFFIX.get(path.suffix.lower())
        if mime is None or not path.is_file():
            continue
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        images.append(EncodedImage(_data_url(data, mime), width, height, mime, len(data)))
    if not images:
        raise ValueError(f"no image files ({', '.join(_MIME_BY_SUFFIX)}) in {folder}")
    return images


def photo_images(width: int, height: int, count: int, seed: int) -> list[EncodedImage]:
    """``count`` distinct photo-like JPEGs (see :mod:`vlmserve.bench.photos`) as data URLs."""
    return [
        EncodedImage(_data_url(data, "image/jpeg"), width, height, "image/jpeg", len(data))
        for data in photo_pool(width, height, count, seed)
    ]


@dataclass
class Workload:
    """The requests of a run: every request carries the same prompt and the same image count.

    With ``turns`` above 1 it is the multi-turn workload: each image set opens a conversation,
    and later requests continue it, resending the whole conversation, images included, as chat
    clients do. Conversations advance one turn per pass over the image pool (all first turns,
    then all second turns, ...), so no turn is sent before the one it follows has been answered
    unless the run's concurrency exceeds the pool.
    """

    images: list[EncodedImage]
    images_per_request: int
    prompt: str
    output_tokens: int
    detail: str | None = None
    source: str = "synthetic"
    turns: int = 1

    def conversations(self) -> int:
        """Distinct image sets, each opening one conversation."""
        return max(len(self.images), 1)

    def messages(self, index: int) -> list[dict[str, Any]]:
        """The chat messages of request ``index``."""
        conversation = index % self.conversations()
        turn = (index // self.conversations()) % self.turns
        content = [{"type": "text", "text": self.prompt}, *self.image_parts(conversation)]
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        for _ in range(turn):
            messages.append({"role": "assistant", "content": ASSISTANT_TURN})
            messages.append({"role": "user", "content": FOLLOW_UP})
        return messages

    def image_parts(self, index: int) -> list[dict[str, Any]]:
        """The ``image_url`` content parts of request ``index``, taken round-robin from the pool."""
        parts = []
        for j in range(self.images_per_request):
            image = self.images[(index * self.images_per_request + j) % len(self.images)]
            url: dict[str, Any] = {"url": image.data_url}
            if self.detail:
                url["detail"] = self.detail
            parts.append({"type": "image_url", "image_url": url})
        return parts

    def body(
        self,
        model: str,
        index: int,
        enforce_length: bool,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The JSON body of request ``index``.

        ``enforce_length`` adds vLLM's length extensions; ``extra`` is merged in last (server
        specific fields such as transformers' ``generation_config``).
        """
        body: dict[str, Any] = {
            "model": model,
            "messages": self.messages(index),
            "max_tokens": self.output_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if enforce_length:
            # Not OpenAI fields: vLLM and vlmserve read them to make every answer exactly N tokens.
            body["min_tokens"] = self.output_tokens
            body["ignore_eos"] = True
        body.update(extra or {})
        return body

    def encoded_bodies(
        self, model: str, enforce_length: bool, extra: dict[str, Any] | None = None
    ) -> list[bytes]:
        """Serialised bodies, one per image combination and turn; request i uses ``[i % len]``."""
        distinct = self.conversations() * self.turns
        return [
            json.dumps(self.body(model, i, enforce_length, extra)).encode() for i in range(distinct)
        ]

    def describe(self) -> dict[str, Any]:
        """The workload as run metadata (no image data)."""
        sizes = sorted({f"{i.width}x{i.height}" for i in self.images})
        return {
            "source": self.source,
            "distinct_images": len(self.images),
            "image_sizes": sizes,
            "image_mime_types": sorted({i.mime for i in self.images}),
            "mean_image_bytes": sum(i.nbytes for i in self.images) // max(len(self.images), 1),
            "images_per_request": self.images_per_request,
            "prompt": self.prompt,
            "output_tokens": self.output_tokens,
            "detail": self.detail,
            "turns": self.turns,
        }
