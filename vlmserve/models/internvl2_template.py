"""InternVL-2's chat templates, one per ``template`` name in OpenGVLab's ``config.json``.

The family (:mod:`vlmserve.models.internvl2`), the checkpoint writer and the loader all render
prompts with these, so the templates live here rather than in any of them.
"""

from __future__ import annotations

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
