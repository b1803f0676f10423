"""What a plan is: the workload and operator overrides it is asked for, and the sized result.

:mod:`vlmserve.planner.planner` searches for a :class:`Plan`, :mod:`vlmserve.planner.explain` puts
its reasons into sentences; both read these types, which is why they live apart from either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlmserve.config import vllm_args
from vlmserve.planner.memory import PROMPT_TEXT_TOKENS

if TYPE_CHECKING:
    from vlmserve.config import Settings


#: Processed pixel bytes per image token, the largest over the families: InternVL's 448 px fp16
#: tile (448 * 448 * 3 * 2 bytes) is 256 tokens; LLaVA's 336 px image is 576 tokens of 14 px.
MM_CACHE_BYTES_PER_IMAGE_TOKEN = 448 * 448 * 3 * 2 // 256


@dataclass(frozen=True)
class Workload:
    """What the deployment must serve."""

    max_images: int = 8
    output_tokens: int = 256
    concurrency: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, max_images: int | None = None) -> Workload:
        """The workload the settings describe; ``max_images`` overrides theirs."""
        images = settings.max_images_per_request if max_images is None else max_images
        return cls(images, settings.expected_output_tokens, settings.target_concurrency)

    def request_tokens(self, images: int, image_tokens: int) -> int:
        """Tokens one request with ``images`` maximum-size images holds when it finishes."""
        return images * image_tokens + PROMPT_TEXT_TOKENS + self.output_tokens


@dataclass(frozen=True)
class Overrides:
    """Planner choices fixed by the operator: the settings marked ``PLANNED`` in config.py
    (``VLMSERVE_DTYPE`` and friends), a field each."""

    dtype: str | None = None
    quantization: str | None = None
    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Overrides:
        """The overrides set in ``settings``: its planned vLLM settings (one field each)."""
        return cls(**vllm_args(settings, planned=True))

    def given(self) -> dict[str, Any]:
        """The fields that are set."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class Plan:
    """A sized deployment and the numbers behind it (GiB figures are totals over the GPUs)."""

    model: str
    repo: str
    gpu: str
    gpu_count: int
    fits: bool
    dtype: str
    quantization: str
    tensor_parallel_size: int
    kv_cache_dtype: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    images_per_prompt: int
    image_tokens: int
    vram_fp16_gib: float
    weights_gib: float
    activation_reserve_gib: float
    overhead_gib: float
    budget_gib: float
    kv_bytes_per_token: int
    kv_cache_gib: float
    kv_cache_tokens: int
    max_concurrent_images: int
    meets_workload: bool
    explanation: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    def engine_args(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.AsyncEngineArgs(model=..., **engine_args)``."""
        args: dict[str, Any] = {
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "limit_mm_per_prompt": {"image": self.images_per_prompt},
            "kv_cache_dtype": self.kv_cache_dtype,
            # Requests that share a prompt prefix (a system prompt, the same image) reuse its KV
            # blocks, and an image seen recently skips the HF processor: both cut time to first
            # token on repeats.
            "enable_prefix_caching": True,
            "mm_processor_cache_gb": self.mm_processor_cache_gib(),
        }
        if self.quantization != "none":
            args["quantization"] = self.quantization
        if self.quantization == "bitsandbytes":
            # vLLM 0.26 sets this itself for bitsandbytes; older releases required it.
            args["load_format"] = "bitsandbytes"
        # No trust_remote_code: vlmserve registers its own classes for the formats that would
        # need the hub's code (vlmserve/models/hf_registry.py), in vLLM's processes too.
        return args

    def mm_processor_cache_gib(self) -> float:
        """Host memory for vLLM's processed-image cache: four batches' worth of images.

        A processed image takes about ``MM_CACHE_BYTES_PER_IMAGE_TOKEN`` bytes per image token;
        four times ``max_num_seqs`` full requests keeps the running batch and recent repeats,
        clamped to 0.5-8 GiB (vLLM keeps one copy in the API process and one in the engine's).
        """
        images = 4 * self.max_num_seqs * self.images_per_prompt
        gib = images * self.image_tokens * MM_CACHE_BYTES_PER_IMAGE_TOKEN / 2**30
        return round(min(8.0, max(0.5, gib)), 2)

    def to_dict(self) -> dict[str, Any]:
        """The plan as one JSON-ready object, ``engine_args`` included."""
        body = dict(vars(self))
        body["engine_args"] = self.engine_args()
        return body
