"""Phi-3-Vision and Phi-3.5-Vision in Microsoft's own checkpoint format (``Phi3VForCausalLM``).

Prompts are ``<|user|>\\n<|image_1|>\\n...<|end|>\\n<|assistant|>\\n``. ``detail`` picks
``num_crops``: 16 at high (Phi-3-Vision's default; 313 to 2,653 tokens an image) and 1 at low
(one crop plus the global view: always 313 tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from vlmserve.models.base import Detail, ModelFamily
from vlmserve.models.phi3v_spec import (
    DEFAULT_NUM_CROPS,
    hd_resize,
    image_tokens,
    max_image_tokens,
)

LOW_DETAIL_CROPS = 1


def crops_for(detail: Detail) -> int:
    """``num_crops`` at ``detail``."""
    return LOW_DETAIL_CROPS if detail == "low" else DEFAULT_NUM_CROPS


class Phi3V(ModelFamily):
    """Phi-3-Vision: CLIP-336 HD crops on Phi-3-mini, Microsoft's checkpoint layout."""

    name: ClassVar[str] = "phi3v"
    architectures: ClassVar[tuple[str, ...]] = ("Phi3VForCausalLM",)
    image_placeholder: ClassVar[str] = "<|image_1|>"
    processor_adds_special_tokens: ClassVar[bool] = True
    # Images are numbered across the whole conversation, as the original processor requires.
    chat_template: ClassVar[str] = (
        "{%- set ns = namespace(n=0) -%}{%- for message in messages -%}"
        "{{ '<|' + message['role'] + '|>\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{%- set ns.n = ns.n + 1 -%}"
        "{{ '<|image_' ~ ns.n ~ '|>\\n' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}{{ '<|end|>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
    )

    def image_tokens(self, width: int, height: int, detail: Detail = "high") -> int:
        """``(rows * cols + 1) * 144 + 1 + (rows + 1) * 12`` for the image's crop grid."""
        return image_tokens(width, height, crops_for(detail))

    def max_image_tokens(self) -> int:
        """A 16x1 grid at 16 crops: 2,653."""
        return max_image_tokens(DEFAULT_NUM_CROPS)

    def processed_size(self, width: int, height: int, detail: Detail = "high") -> tuple[int, int]:
        """The HD resize, before the short side is padded to whole 336-pixel crops."""
        return hd_resize(width, height, crops_for(detail))

    def processor_kwargs(self, detail: Detail) -> dict[str, Any]:
        """``num_crops`` for the image processor (vLLM takes the same key)."""
        return {"num_crops": crops_for(detail)}

    def load(self, path: str | Path, device: str) -> tuple[Any, Any]:
        """Microsoft's files, read by vlmserve's classes; nothing from the checkpoint runs."""
        from transformers import AutoTokenizer

        from vlmserve.models.phi3v_image import Phi3VImageProcessor
        from vlmserve.models.phi3v_modeling import Phi3VConfig, Phi3VForCausalLM
        from vlmserve.models.phi3v_processor import Phi3VProcessor

        config = Phi3VConfig.from_pretrained(path)
        model = Phi3VForCausalLM.from_pretrained(path, config=config, dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        image_processor = Phi3VImageProcessor.from_pretrained(path)
        processor = Phi3VProcessor(image_processor, tokenizer, chat_template=self.chat_template)
        return model.to(device).eval(), processor  # type: ignore[arg-type]

    def build_tiny(self, out_dir: Path) -> Path:
        """Phi-3-V's layout and vocabulary at tiny widths; CLIP keeps its width but runs 1 layer."""
        from vlmserve.models.phi3v_files import write_tiny

        return write_tiny(out_dir, self.chat_template)

    def full_config(self, out_dir: Path, variant: str = "phi-3-vision") -> Path:
        """Config, tokenizer and processor files of a full-size checkpoint, without weights."""
        from vlmserve.models.phi3v_files import write_full

        return write_full(out_dir, variant, self.chat_template)
