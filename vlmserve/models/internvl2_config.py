"""OpenGVLab's ``internvl_chat`` config, read without the checkpoint's ``configuration_*.py``.

``vision_config`` is InternViT's config and ``llm_config`` the language model's, with its own
``architectures``: ``InternLM2ForCausalLM`` (2B, 8B, 26B), ``Qwen2ForCausalLM`` (1B),
``Phi3ForCausalLM`` (4B) or ``LlamaForCausalLM`` (76B). Both stay plain attribute bags with every
original field, which is what vLLM's ``InternVLChatModel`` reads; transformers has no InternLM2
config class, so that one could not be typed anyway.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import PretrainedConfig

#: ``llm_config.architectures[0]`` -> transformers ``model_type`` of the equivalent language model.
LM_MODEL_TYPES = {
    "InternLM2ForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Phi3ForCausalLM": "phi3",
    "LlamaForCausalLM": "llama",
}


class InternVLChatConfig(PretrainedConfig):
    """``model_type: internvl_chat`` with ``vision_config`` and ``llm_config`` sub-configs."""

    model_type = "internvl_chat"
    # Tells transformers the sub-configs are built here, from plain dicts, not from defaults.
    has_no_defaults_at_init = True

    def __init__(
        self,
        vision_config: dict[str, Any] | PretrainedConfig | None = None,
        llm_config: dict[str, Any] | PretrainedConfig | None = None,
        select_layer: int = -1,
        force_image_size: int | None = None,
        downsample_ratio: float = 0.5,
        template: str | None = None,
        dynamic_image_size: bool = False,
        use_thumbnail: bool = False,
        ps_version: str = "v1",
        min_dynamic_patch: int = 1,
        max_dynamic_patch: int = 6,
        **kwargs: Any,
    ) -> None:
        self.vision_config = _as_config(vision_config, "intern_vit_6b")
        self.llm_config = _as_config(llm_config, "")
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    @property
    def lm_architecture(self) -> str:
        """The language model's architecture name, e.g. ``InternLM2ForCausalLM``."""
        return str((getattr(self.llm_config, "architectures", None) or [""])[0])

    def to_dict(self) -> dict[str, Any]:
        """Serialise with both sub-configs as plain dicts, as the original files hold them."""
        output = copy.deepcopy(
            {k: v for k, v in self.__dict__.items() if k not in ("vision_config", "llm_config")}
        )
        output["vision_config"] = self.vision_config.to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        output["model_type"] = self.model_type
        return output


def _as_config(
    value: dict[str, Any] | PretrainedConfig | None, model_type: str
) -> PretrainedConfig:
    """A sub-config holding every key of ``value`` as an attribute."""
    if isinstance(value, PretrainedConfig):
        return value
    fields = dict(value or {})
    fields.setdefault("model_type", model_type)
    sub = PretrainedConfig(**{k: v for k, v in fields.items() if k != "model_type"})
    # PretrainedConfig keeps model_type on the class; the original value must survive a round trip.
    sub.model_type = fields["model_type"]  # type: ignore[misc]
    return sub
