"""vLLM's LLaVA and LLaVA-NeXT models, also reading folders saved by transformers 5.

transformers 5 saves a LLaVA's CLIP tower as ``vision_tower.embeddings.*`` where the hub
checkpoints (and vLLM) have ``vision_tower.vision_model.embeddings.*``, so vLLM 0.26 cannot load
a LLaVA that was fine-tuned and saved with transformers 5. These subclasses change nothing but
vLLM's weight-name mapping, which gains the rename from :mod:`vlmserve.models.llava`;
:mod:`vlmserve.models.vllm_plugin` registers them in place of vLLM's classes. Only vLLM imports
this module.
"""

from __future__ import annotations

from vllm.model_executor.models.llava import (
    LlavaForConditionalGeneration as _VLLMLlava,
)
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration as _VLLMLlavaNext,
)
from vllm.model_executor.models.utils import WeightsMapper

from vlmserve.models.llava import FLAT_CLIP_TOWER, HUB_CLIP_TOWER

#: Applied before vLLM's own prefix mapping (vLLM runs regexes first), so both the legacy
#: (``vision_tower.``) and the transformers-4.52+ (``model.vision_tower.``) prefixes are covered.
_FLAT_CLIP_NAMES = WeightsMapper(orig_to_new_regex={FLAT_CLIP_TOWER: HUB_CLIP_TOWER})


class LlavaForConditionalGeneration(_VLLMLlava):
    """vLLM's LLaVA-1.5, reading transformers-5-saved CLIP towers too."""

    hf_to_vllm_mapper = _FLAT_CLIP_NAMES | _VLLMLlava.hf_to_vllm_mapper


class LlavaNextForConditionalGeneration(_VLLMLlavaNext):
    """vLLM's LLaVA-NeXT, reading transformers-5-saved CLIP towers too."""

    hf_to_vllm_mapper = _FLAT_CLIP_NAMES | _VLLMLlavaNext.hf_to_vllm_mapper
