"""The model catalogue: every model vlmserve can size and serve by name.

Each entry names its Hugging Face repo, its model family (by name, so image-token rules live in
one place: the family), the architecture numbers from the repo's ``config.json``, any
pre-quantized repos that really exist, and the source guide's hardware row where it has one.
Parameter counts and weight sizes are computed from the numbers
(:mod:`vlmserve.models.architecture`).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmserve.models.architecture import (
    CLIP_VIT_L_336,
    CLIP_VIT_L_336_PHI3V,
    INTERN_VIT_6B,
    INTERN_VIT_300M,
    LanguageModel,
    VisionTower,
)


@dataclass(frozen=True)
class HardwareRow:
    """One row of the source guide's "Hardware Requirements" table (seed/000_637767bf40edde85)."""

    label: str
    minimum_gpu: str
    recommended_gpu: str
    vram_fp16_gb: float


#: The guide's table, keyed by its first column; GPU names are written as ``vlmserve plan --gpu``
#: specs ("RTX 3060 (12GB)" is RTX3060, "A100 (40GB)" is A100-40GB).
HARDWARE_TABLE: dict[str, HardwareRow] = {
    row.label: row
    for row in (
        HardwareRow("LLaVA 7B", "RTX3060", "A10G", 15),
        HardwareRow("LLaVA 34B", "A100-40GB", "2xA10G", 70),
        HardwareRow("InternVL-2 8B", "RTX4080", "A10G", 18),
        HardwareRow("Phi-3-Vision 4B", "RTX3070", "RTX4080", 9),
    )
}


@dataclass(frozen=True)
class QuantizedRepo:
    """A published pre-quantized checkpoint of a catalogue model."""

    method: str  # vLLM's quantization name: "awq" or "gptq"
    repo: str
    bits: int = 4
    group_size: int = 128


@dataclass(frozen=True)
class CatalogModel:
    """One servable model."""

    name: str
    repo: str
    family: str
    text: LanguageModel
    vision: VisionTower
    quantized: tuple[QuantizedRepo, ...] = ()
    hardware_row: str | None = None

    @property
    def hardware(self) -> HardwareRow | None:
        """The source guide's hardware row for this model, if it has one."""
        return HARDWARE_TABLE[self.hardware_row] if self.hardware_row else None

    def params(self) -> int:
        """All parameters: language model, vision encoder and projector."""
        return (
            self.text.params()
            + self.vision.encoder_params()
            + self.vision.projector_params(self.text.hidden)
        )

    def quantized_repo(self, method: str) -> QuantizedRepo | None:
        """The pre-quantized repo for ``method``, if one is published."""
        return next((q for q in self.quantized if q.method == method), None)


def _lm(
    name: str,
    layers: int,
    hidden: int,
    heads: int,
    kv: int,
    inter: int,
    vocab: int,
    context: int,
    **extra: bool,
) -> LanguageModel:
    return LanguageModel(name, layers, hidden, heads, kv, inter, vocab, context, **extra)


def _awq(repo: str) -> tuple[QuantizedRepo, ...]:
    return (QuantizedRepo("awq", repo),)


# Values checked against each repo's config.json (text_config / llm_config); see the issue note
# for the ones only checkable through the base language model's own config.
_VICUNA_7B = _lm("Vicuna-7B v1.5 (Llama-2)", 32, 4096, 32, 32, 11008, 32064, 4096)
_PHI3_MINI = _lm("Phi-3-mini-128k", 32, 3072, 32, 32, 8192, 32064, 131072)

CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            "llava-1.5-7b",
            "llava-hf/llava-1.5-7b-hf",
            "llava",
            _VICUNA_7B,
            CLIP_VIT_L_336,
            hardware_row="LLaVA 7B",
        ),
        CatalogModel(
            "llava-1.5-13b",
            "llava-hf/llava-1.5-13b-hf",
            "llava",
            _lm("Vicuna-13B v1.5", 40, 5120, 40, 40, 13824, 32064, 4096),
            CLIP_VIT_L_336,
        ),
        CatalogModel(
            "llava-1.6-mistral-7b",
            "llava-hf/llava-v1.6-mistral-7b-hf",
            "llava-next",
            _lm("Mistral-7B-Instruct-v0.2", 32, 4096, 32, 8, 14336, 32064, 32768),
            CLIP_VIT_L_336,
            hardware_row="LLaVA 7B",
        ),
        CatalogModel(
            "llava-1.6-34b",
            "llava-hf/llava-v1.6-34b-hf",
            "llava-next",
            _lm("Nous-Hermes-2-Yi-34B", 60, 7168, 56, 8, 20480, 64064, 4096),
            CLIP_VIT_L_336,
            _awq("mesolitica/llava-v1.6-34b-hf-awq"),
            hardware_row="LLaVA 34B",
        ),
        CatalogModel(
            "internvl2-1b",
            "OpenGVLab/InternVL2-1B",
            "internvl2",
            _lm("Qwen2-0.5B-Instruct", 24, 896, 14, 2, 4864, 151655, 32768, qkv_bias=True),
            INTERN_VIT_300M,
        ),
        CatalogModel(
            "internvl2-2b",
            "OpenGVLab/InternVL2-2B",
            "internvl2",
            _lm("InternLM2-Chat-1.8B", 24, 2048, 16, 8, 8192, 92553, 32768),
            INTERN_VIT_300M,
            _awq("OpenGVLab/InternVL2-2B-AWQ"),
        ),
        CatalogModel(
            "internvl2-4b",
            "OpenGVLab/InternVL2-4B",
            "internvl2",
            _lm("Phi-3-mini-128k", 32, 3072, 32, 32, 8192, 32020, 131072),
            INTERN_VIT_300M,
        ),
        CatalogModel(
            "internvl2-8b",
            "OpenGVLab/InternVL2-8B",
            "internvl2",
            _lm("InternLM2.5-7B-Chat", 32, 4096, 32, 8, 14336, 92553, 32768),
            INTERN_VIT_300M,
            _awq("OpenGVLab/InternVL2-8B-AWQ"),
            hardware_row="InternVL-2 8B",
        ),
        CatalogModel(
            "internvl2-26b",
            "OpenGVLab/InternVL2-26B",
            "internvl2",
            _lm("InternLM2-Chat-20B", 48, 6144, 48, 8, 16384, 92553, 32768),
            INTERN_VIT_6B,
            _awq("OpenGVLab/InternVL2-26B-AWQ"),
        ),
        CatalogModel(
            "internvl2-76b",
            "OpenGVLab/InternVL2-Llama3-76B",
            "internvl2",
            _lm("Hermes-2-Theta-Llama-3-70B", 80, 8192, 64, 8, 28672, 128261, 8192),
            INTERN_VIT_6B,
            _awq("OpenGVLab/InternVL2-Llama3-76B-AWQ"),
        ),
        CatalogModel(
            "phi-3-vision",
            "microsoft/Phi-3-vision-128k-instruct",
            "phi3v",
            _PHI3_MINI,
            CLIP_VIT_L_336_PHI3V,
            hardware_row="Phi-3-Vision 4B",
        ),
        CatalogModel(
            "phi-3.5-vision",
            "microsoft/Phi-3.5-vision-instruct",
            "phi3v",
            _PHI3_MINI,
            CLIP_VIT_L_336_PHI3V,
        ),
    )
}


def get_model(name: str) -> CatalogModel:
    """The catalogue entry called ``name``; ``KeyError`` lists the known ones."""
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(CATALOG)}") from None


def find_by_repo(repo: str) -> CatalogModel | None:
    """The entry whose repo (or a pre-quantized repo) is ``repo``, compared case-insensitively."""
    wanted = repo.lower()
    for model in CATALOG.values():
        if model.repo.lower() == wanted or any(q.repo.lower() == wanted for q in model.quantized):
            return model
    return None


def max_image_tokens(model: CatalogModel) -> int:
    """Most prompt tokens one image takes at high detail, asked of the model's family."""
    from vlmserve.models.families import get_family

    return get_family(model.family).max_image_tokens()


def uses_fallback_image_tokens(model: CatalogModel) -> bool:
    """Whether :func:`max_image_tokens` for ``model`` comes from the fallback table."""
    from vlmserve.models.families import FAMILIES

    return model.family not in FAMILIES
