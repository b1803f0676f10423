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
    num_tiles,
    tiled_size,
)

IMAGE_TEXT = "<image>\n"
# OpenGVLab's default system message for InternVL2 (``conversation.py``, templates
# ``internlm2-chat``, ``Hermes-2`` and ``phi3-chat``); the model was tuned with it.
DEFAULT_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
    "是一个有用无害的人工智能助手。"
)
#: ``template`` -> (turn start for a role, turn end).
TEMPLATE_TAGS = {
    "internlm2-chat": ("<|im_start|>{role}\n", "<|im_end|>"),
    "Hermes-2": ("<|im_start|>{role}\n", "<|im_end|>"),
    "phi3-chat": ("<|{role}|>\n", "<|end|>"),
}


def _content(var: str) -> str:
    """Jinja for one message's content: a string, or text and ``<image>`` parts in order."""
    return (
        "{%- if " + var + " is string -%}{{ " + var + " }}{%- else -%}"
        "{%- for part in " + var + " -%}{%- if part['type'] == 'image' -%}{{ '<image>\\n' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}"
        "{%- endif -%}"
    )


def chat_template_for(template: str) -> str:
    """The Jinja chat template for an InternVL-2 ``template`` name."""
    if template not in TEMPLATE_TAGS:
        raise ValueError(f"InternVL template {template!r} is not supported")
    start, end = TEMPLATE_TAGS[template]
    open_turn = "{{ '" + start.replace("{role}", "' + ROLE + '").replace("\n", "\\n") + "' }}"
    return (
        "{%- set ns = namespace(system=" + repr(DEFAULT_SYSTEM) + ") -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set ns.system = messages[0]['content'] -%}{%- endif -%}"
        + open_turn.replace("ROLE", "'system'")
        + _content("ns.system")
        + end
        + "{%- for message in messages -%}{%- if message['role'] != 'system' -%}"
        + open_turn.replace("ROLE", "message['role']")
        + _content("message['content']")
        + end
        + "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}"
        + open_turn.replace("ROLE", "'assistant'")
        + "{%- endif -%}"
    )


def max_tiles_for(detail: Detail) -> int:
    """``max_dynamic_patch`` at ``detail``."""
    return 1 if detail == "low" else MAX_TILES


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
