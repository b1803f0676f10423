"""What every model family knows: prompt format, image-token rule, per-request knobs, tiny builder.

Handlers and engines never branch on a family's name; they ask its :class:`ModelFamily` object.
"""

from __future__ import annotations

import abc
import json
import math
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from vlmserve.images.detail import Detail

__all__ = ["Detail", "ModelFamily", "content_template"]


class ModelFamily(abc.ABC):
    """One line of vision-language models that share a prompt format and image handling."""

    #: Short name used by ``vlmserve tiny-model`` and the catalogue ("llava", "internvl").
    name: ClassVar[str]
    #: Hugging Face ``architectures`` values of checkpoints this family serves.
    architectures: ClassVar[tuple[str, ...]]
    #: The text that stands for one image in a rendered prompt, before the processor expands it.
    image_placeholder: ClassVar[str]
    #: Jinja chat template for checkpoints that bring none (the tiny ones included).
    chat_template: ClassVar[str]
    #: Whether the family's processor tokenizes prompt text with the tokenizer's special tokens
    #: (its BOS) where the chat template writes none: Phi-3-V's does, for every text chunk. vLLM
    #: renders a chat without images straight to token ids with no special tokens, so for such a
    #: family those chats are tokenized again with them, to start as prompts with images do.
    processor_adds_special_tokens: ClassVar[bool] = False

    @abc.abstractmethod
    def image_tokens(self, width: int, height: int, detail: Detail = "high") -> int:
        """Prompt tokens one ``width`` x ``height`` image takes at ``detail``."""

    @abc.abstractmethod
    def max_image_tokens(self) -> int:
        """The most prompt tokens any one image can take at high detail."""

    @abc.abstractmethod
    def processed_size(self, width: int, height: int, detail: Detail = "high") -> tuple[int, int]:
        """(width, height) that covers every resize the image processor makes of this image.

        Each image the processor scales to (a shortest-edge resize, a tile canvas, a thumbnail)
        fits inside it. Its area bounds the processor's work on the image; an image at least this
        large in both directions is only ever scaled down by the processor.
        """

    def working_size(self, width: int, height: int, detail: Detail = "high") -> tuple[int, int]:
        """The smallest size, aspect ratio kept, that the model sees no less of than the original.

        At this size every resize the processor makes still scales down (or not at all), and the
        image-token count is the one of the original size; so an image can be shrunk to it before
        it reaches the processor. The image's own size when it is already no larger.
        """
        target_w, target_h = self.processed_size(width, height, detail)
        scale = max(target_w / width, target_h / height)
        if scale >= 1:
            return width, height
        tokens = self.image_tokens(width, height, detail)
        # Rounding can move an aspect ratio across a boundary of the processor's own integer
        # arithmetic, so candidates near the exact scale are tried, and one is taken only when
        # the processor scales it to exactly the same size and it keeps the image-token count.
        scales = sorted({scale, target_w / width, target_h / height}, reverse=True)
        for factor in scales:
            for rounding in (round, math.ceil, math.floor):
                size = (int(rounding(width * factor)), int(rounding(height * factor)))
                if (
                    target_w <= size[0] <= width
                    and target_h <= size[1] <= height
                    and self.processed_size(*size, detail) == (target_w, target_h)
                    and self.image_tokens(*size, detail) == tokens
                ):
                    return size
        return width, height

    def prepare_image(self, image: Image.Image, detail: Detail) -> Image.Image:
        """Resize an image for ``detail`` when the family's knob is the input size itself."""
        return image

    def processor_kwargs(self, detail: Detail) -> dict[str, Any]:
        """Per-request keyword arguments for the image processor (tiles, crops) at ``detail``."""
        return {}

    def load(self, path: str | Path, device: str) -> tuple[Any, Any]:
        """Load ``(model, processor)`` from a local checkpoint for the transformers engine.

        The model must answer two calls: a prefill ``model(**processor_outputs, use_cache=True)``
        and a decode step ``model(input_ids=, attention_mask=, position_ids=, past_key_values=,
        use_cache=True)``, each returning ``.logits`` and ``.past_key_values``.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
        model = model.to(device).eval()  # type: ignore[arg-type]
        if processor.chat_template is None:
            processor.chat_template = self.chat_template
        return model, processor

    @abc.abstractmethod
    def build_tiny(self, out_dir: Path) -> Path:
        """Write a tiny random-weight checkpoint with this family's real image geometry."""


def content_template(image_text: str) -> str:
    """Jinja that renders one message's content: a string, or text and image parts in order."""
    return (
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ " + json.dumps(image_text) + " }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    )
