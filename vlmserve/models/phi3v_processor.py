"""Phi-3-Vision's processor: ``<|image_N|>`` tags become the image's tokens.

The prompt is split at every ``<|image_N|>`` tag; each text chunk is tokenized on its own with the
tokenizer's BOS, as Microsoft's ``processing_phi3_v.py`` does, and each tag becomes as many
``<|image|>`` ids as the image takes. (Microsoft's processor writes ``-N`` there and its model
looks for negative ids; a real token id keeps ``input_ids`` decodable and is what vLLM substitutes.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, overload

import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

from vlmserve.models.phi3v_image import Phi3VImageProcessor

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
#: The token that stands for one image position in ``input_ids``.
IMAGE_TOKEN = "<|image|>"


class ImageTags(Sequence[str]):
    """``<|image_1|>``, ``<|image_2|>``, ...: the tags vLLM reads as ``processor.img_tokens``."""

    def __len__(self) -> int:
        return 1_000_000

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not 0 <= index < len(self):
            raise IndexError(index)
        return f"<|image_{index + 1}|>"


class Phi3VProcessor(ProcessorMixin):
    """Tokenizer plus :class:`Phi3VImageProcessor`, producing what
    :mod:`vlmserve.models.phi3v_modeling` and vLLM's ``Phi3VForCausalLM`` expect."""

    attributes: ClassVar[list[str]] = ["image_processor", "tokenizer"]

    def __init__(
        self,
        image_processor: Phi3VImageProcessor | None = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        num_crops: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        if num_crops is not None and image_processor is not None:
            image_processor.num_crops = num_crops
        self.img_tokens = ImageTags()

    @property
    def image_token_id(self) -> int:
        """Id of ``<|image|>``."""
        return int(self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))

    def calc_num_image_tokens_from_image_size(self, width: int, height: int) -> int:
        """Tokens for one image of this size at the processor's ``num_crops``."""
        return self.image_processor.calc_num_image_tokens_from_image_size(width, height)

    def __call__(  # type: ignore[override]
        self,
        text: str | list[str] | None = None,
        images: Image.Image | list[Image.Image] | None = None,
        return_tensors: str | None = "pt",
        num_crops: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenize one prompt and preprocess its images (``num_crops`` overrides the default)."""
        prompt = text[0] if isinstance(text, list) else text or ""
        if not images:
            encoded = self.tokenizer(prompt, return_tensors="pt")
            return BatchFeature(data=dict(encoded))
        image_inputs = self.image_processor(images, num_crops=num_crops)
        input_ids = self._expand(prompt, image_inputs["num_img_tokens"])
        return BatchFeature(
            data={
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "pixel_values": image_inputs["pixel_values"],
                "image_sizes": image_inputs["image_sizes"],
            }
        )

    def _expand(self, prompt: str, tokens_per_image: list[int]) -> torch.Tensor:
        """Token ids of ``prompt`` with each ``<|image_N|>`` expanded to image N's tokens."""
        numbers = [int(n) for n in IMAGE_TAG.findall(prompt)]
        if sorted(set(numbers)) != list(range(1, len(tokens_per_image) + 1)):
            raise ValueError(
                f"image tags {numbers} do not number the {len(tokens_per_image)} images from 1"
            )
        chunks = IMAGE_TAG.split(prompt)[::2]
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            ids.extend(self.tokenizer(chunk)["input_ids"])
            if i < len(numbers):
                ids.extend([self.image_token_id] * tokens_per_image[numbers[i] - 1])
        return torch.tensor([ids], dtype=torch.long)

    @property
    def model_input_names(self) -> list[str]:
        """Names the model's forward accepts."""
        return ["input_ids", "attention_mask", "pixel_values", "image_sizes"]
