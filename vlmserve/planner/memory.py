"""How vLLM spends one GPU's memory: weights, activations, runtime overhead and the KV cache.

vLLM gives itself ``total memory x gpu_memory_utilization``, loads the weights, runs one profiling
pass at the largest batch (text tokens and the vision encoder on maximum-size images), estimates
CUDA-graph memory, and hands whatever is left to the KV cache. This module models each piece from
the architecture numbers, with the constants below and where they come from.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmserve.models.catalog import CatalogModel

GIB = 1024**3

#: vLLM's default share of GPU memory (``CacheConfig.gpu_memory_utilization``).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
#: Memory outside PyTorch's allocator on each GPU (CUDA context, cuBLAS and NCCL workspaces).
#: vLLM's start-up log reports 0.16 to 0.33 GiB on one GPU ("non_torch_memory takes ...",
#: kubernetes-sigs/gateway-api-inference-extension#550, vllm-project/vllm#14452); rounded up to
#: leave room for NCCL buffers under tensor parallelism.
NON_TORCH_GIB = 0.5
#: CUDA graphs. Since v0.21 vLLM profiles their memory and takes it from the same budget; logs
#: show 0.13 to 0.53 GiB for 1B to 8B models (gpustack/runner#251 "Estimated CUDA graph memory:
#: 0.36 GiB", vllm-project/vllm#11349 "took 0.21 GiB").
CUDA_GRAPH_GIB = 0.5
#: Headroom on the activation estimate for torch.compile buffers and allocator fragmentation:
#: the plain tensor sizes come to about half of the "PyTorch activation peak" vLLM logs for 8B
#: models at 8,192 batched tokens (1.0 to 2.4 GiB in the logs cited above).
ACTIVATION_HEADROOM = 2
#: Bytes per element of the sampler's logits, which vLLM computes in float32.
LOGITS_BYTES = 4
#: vLLM's default tokens per scheduler step for the OpenAI server: 8,192 on GPUs with at least
#: 70 GiB that are not A100s, 2,048 elsewhere (``EngineArgs._set_default_max_num_seqs_and_
#: batched_tokens_args`` in vLLM 0.26.0).
LARGE_GPU_BATCHED_TOKENS = 8192
SMALL_GPU_BATCHED_TOKENS = 2048

#: Bits stored per weight of the language model's linear layers, by vLLM quantization name.
#: AWQ and GPTQ at 4 bits, group 128: an fp16 scale and a 4-bit zero point per 128 weights.
#: bitsandbytes (vLLM quantizes to 4-bit on load): an fp32 absmax per 64-weight block.
LINEAR_BITS: dict[str, float] = {
    "none": 16,
    "fp8": 8,
    "awq": 4 + (16 + 4) / 128,
    "gptq": 4 + (16 + 4) / 128,
    "bitsandbytes": 4 + 32 / 64,
}
#: Bytes per element of the activation dtypes vLLM accepts.
DTYPE_BYTES: dict[str, int] = {
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "auto": 2,
    "float32": 4,
    "float": 4,
}
#: Bytes per element of the KV cache by ``kv_cache_dtype``.
KV_DTYPE_BYTES: dict[str, int] = {
    "auto": 2,
    "bfloat16": 2,
    "float16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}


def weight_bytes(model: CatalogModel, quantization: str) -> int:
    """Bytes of all weights when the language model's linear layers use ``quantization``.

    Embeddings, the LM head, norms, the vision encoder and the projector stay in 16 bits: the
    published AWQ checkpoints keep them so, and counting them at 16 bits for in-flight methods
    errs on the safe side.
    """
    linear = model.text.linear_params() * LINEAR_BITS[quantization] / 8
    sixteen_bit = (
        model.text.other_params()
        + model.vision.encoder_params()
        + model.vision.projector_params(model.text.hidden)
    )
    return int(linear + 2 * sixteen_bit)


def batched_tokens_for(memory_gib: float, gpu_name: str) -> int:
    """vLLM's default ``max_num_batched_tokens`` for the OpenAI server on this GPU."""
    large = memory_gib >= 70 and "A100" not in gpu_name.upper()
    return LARGE_GPU_BATCHED_TOKENS if large else SMALL_GPU_BATCHED_TOKENS


def activation_bytes(
    model: CatalogModel,
    batched_tokens: int,
    max_num_seqs: int,
    image_tokens: int,
    dtype_bytes: int,
) -> int:
    """Peak memory of vLLM's profiling pass beyond the weights, on one GPU.

    Text: each batched token holds the gated MLP's two intermediate rows and a few hidden-width
    tensors. Sampler: one float32 row of logits per sequence. Vision: vLLM profiles the encoder
    on as many maximum-size images as fill its token budget, each ``image_tokens x merge``
    encoder positions wide, and keeps an encoder-output cache of that budget.
    """
    text = model.text
    tower = model.vision
    text_peak = batched_tokens * (2 * text.intermediate + 4 * text.hidden) * dtype_bytes
    logits = max_num_seqs * text.vocab * LOGITS_BYTES
    budget = max(batched_tokens, image_tokens)
    images = max(1, budget // image_tokens)
    encoder_positions = images * image_tokens * tower.encoder_tokens_per_image_token()
    vision_peak = encoder_positions * (tower.intermediate + 4 * tower.hidden) * dtype_bytes
    encoder_cache = budget * text.hidden * dtype_bytes
    return int(ACTIVATION_HEADROOM * (text_peak + vision_peak) + logits + encoder_cache)


def overhead_bytes() -> int:
    """Per-GPU memory vLLM needs besides weights, activations and KV cache."""
    return int((NON_TORCH_GIB + CUDA_GRAPH_GIB) * GIB)


@dataclass(frozen=True)
class MemorySplit:
    """One GPU's budget and where it goes (all in bytes, per GPU)."""

    budget: int
    weights: int
    activations: int
    overhead: int

    @property
    def kv_cache(self) -> int:
        """What is left for the KV cache (never negative)."""
        return max(0, self.budget - self.weights - self.activations - self.overhead)

    @property
    def shortfall(self) -> int:
        """How far weights and reserves overshoot the budget (0 when they fit)."""
        return max(0, self.weights + self.activations + self.overhead - self.budget)


#: Text tokens in a request besides its images: system prompt, question and chat template.
PROMPT_TEXT_TOKENS = 512


def context_for(
    model: CatalogModel, max_images: int, output_tokens: int, image_tokens: int
) -> tuple[int, int]:
    """(images per prompt, max_model_len): as many of the wanted images as the context holds."""
    text = PROMPT_TEXT_TOKENS + output_tokens
    room = max(0, model.text.context - text)
    images = min(max_images, room // image_tokens)
    return images, images * image_tokens + text
