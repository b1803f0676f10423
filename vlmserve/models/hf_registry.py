"""Teach transformers' ``Auto*`` classes the original Phi-3-V and InternVL-2 formats.

Microsoft's and OpenGVLab's checkpoints name hub code in ``auto_map`` (``configuration_phi3_v.py``,
``configuration_internvl_chat.py``, ...). Once vlmserve's own classes are registered for their
``model_type``, ``AutoConfig`` / ``AutoProcessor`` with ``trust_remote_code=False`` use them and
never import a checkpoint's ``.py`` file. vLLM loads configs and processors through these same
``Auto*`` classes, which is how its native ``Phi3VForCausalLM`` and ``InternVLChatModel`` get their
config and processor without remote code. Importing this module registers them (also in vLLM's
worker processes, which import it when they unpickle a config class defined here).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoProcessor

from vlmserve.models.internvl2_config import InternVLChatConfig
from vlmserve.models.phi3v_image import Phi3VImageProcessor
from vlmserve.models.phi3v_modeling import Phi3VConfig
from vlmserve.models.phi3v_processor import Phi3VProcessor


def register_original_formats() -> None:
    """Register vlmserve's config and processor classes (idempotent)."""
    AutoConfig.register(Phi3VConfig.model_type, Phi3VConfig, exist_ok=True)
    AutoImageProcessor.register(
        Phi3VConfig, image_processor_classes={"pil": Phi3VImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(Phi3VConfig, Phi3VProcessor, exist_ok=True)
    AutoConfig.register(InternVLChatConfig.model_type, InternVLChatConfig, exist_ok=True)


register_original_formats()
