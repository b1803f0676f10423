"""InternVL-2 in OpenGVLab's own format (``InternVLChatModel``, ``model_type: internvl_chat``).

The weights are renamed onto transformers' ``InternVLForConditionalGeneration`` at load time
(:mod:`vlmserve.models.internvl2_convert`). Prompts follow the checkpoint's ``template``: ChatML
(``internlm2-chat``, ``Hermes-2``) or Phi-3's tags (``phi3-chat``, InternVL2-4B), turns joined
without newlines, with OpenGVLab's default system message. ``<image>\\n`` before the text stands
for an image and becomes ``<img>`` + 256 ``<IMG_CONTEXT>`` per tile + ``</img>``; tiles follow
:func:`vlmserve.models.internvl.tile_grid`. ``detail`` sets ``max_dynamic_patch``: 12 at high,
1 at low.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from vlmserve.models.base import Detail, ModelFamily
from vlmserve.models.internvl import (
    IMAGE_DELIMITERS,
    MAX_TILES,
    TOKENS_PER_TILE,
    max_tiles_for,
    num_tiles,
    tiled_size,
)
from vlmserve.models.internvl2_template import chat_template_for

IMAGE_TEXT = "<image>\n"


class InternVL2(ModelFamily):
    """InternVL-2 (1B to 76B) from OpenGVLab's files, 258 to 3,330 tokens per image."""

    name: ClassVar[str] = "internvl2"
    architectures: ClassVar[tuple[str, ...]] = ("InternVLChatModel",)
    image_placeholder: ClassVar[str] = IMAGE_TEXT
    chat_template: ClassVar[str] = chat_template_for("Hermes-2")

    def image_tokens(self, width: int, height: int, detail: Detail = "high") -> int:
        """256 per tile (plus a thumbnail past one tile) and ``<img>``, ``</img>``."""
        return TOKENS_PER_TILE * num_tiles(width, height, max_tiles_for(detail)) + IMAGE_DELIMITERS

    def max_image_tokens(self) -> int:
        """12 tiles and a thumbnail: 3,330."""
        return TOKENS_PER_TILE * (MAX_TILES + 1) + IMAGE_DELIMITERS

    def processed_size(self, width: int, height: int, detail: Detail = "high") -> tuple[int, int]:
        """The tile grid's canvas (the 448 thumbnail fits inside it)."""
        return tiled_size(width, height, max_tiles_for(detail))

    def processor_kwargs(self, detail: Detail) -> dict[str, Any]:
        """``max_dynamic_patch``, the key vLLM's InternVL processing takes too."""
        return {"max_dynamic_patch": max_tiles_for(detail)}

    def load(self, path: str | Path, device: str) -> tuple[Any, Any]:
        """Read the original files and rename the weights; nothing from the checkpoint runs."""
        from vlmserve.models.internvl2_load import load_internvl2

        return load_internvl2(Path(path), device)

    def build_tiny(self, out_dir: Path) -> Path:
        """InternVL2-1B's layout (Qwen2 language model, Qwen2 BPE tokenizer) at tiny widths."""
        from vlmserve.models.internvl2_files import write_tiny

        return write_tiny(out_dir)

    def full_config(self, out_dir: Path, variant: str = "internvl2-8b") -> Path:
        """Config, tokenizer and processor files of a full-size checkpoint, without weights."""
        from vlmserve.models.internvl2_files import write_full

        return write_full(out_dir, variant)
