"""The planner's reasons in plain sentences: one or two per choice, numbers included."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlmserve.planner.gpus import GPUSpec
from vlmserve.planner.memory import context_for

if TYPE_CHECKING:
    from vlmserve.models.catalog import CatalogModel
    from vlmserve.planner.plan import Plan, Workload

_METHOD_WORDS = {
    "fp8": "fp8 weights (vLLM quantizes on load; about half the 16-bit size)",
    "awq": "4-bit AWQ weights from a published pre-quantized checkpoint",
    "gptq": "4-bit GPTQ weights from a published pre-quantized checkpoint",
    "bitsandbytes": "4-bit bitsandbytes weights (vLLM quantizes on load; 8-bit would need a "
    "pre-quantized checkpoint)",
}


def _dtype_reason(plan: Plan, gpu: GPUSpec) -> str:
    cc = ".".join(map(str, gpu.compute_capability))
    if "dtype" in plan.overrides:
        return f"dtype {plan.dtype}: set by VLMSERVE_DTYPE."
    if plan.quantization in ("awq", "gptq"):
        return f"dtype float16: vLLM's {plan.quantization.upper()} kernels take float16."
    if plan.dtype == "bfloat16":
        return f"dtype bfloat16: the {gpu.name} (compute capability {cc}) computes in bf16."
    return f"dtype float16: the {gpu.name} (compute capability {cc}) has no bf16."


def _quantization_reason(plan: Plan, model: CatalogModel, gpu: GPUSpec) -> str:
    if "quantization" in plan.overrides:
        return f"Quantization {plan.quantization}: set by VLMSERVE_QUANTIZATION."
    if plan.quantization == "none":
        return (
            f"No quantization: the 16-bit weights ({plan.weights_gib} GiB) fit with room "
            "for the workload, so quality is kept."
        )
    words = _METHOD_WORDS[plan.quantization]
    repo = f" ({plan.repo})" if plan.repo != model.repo else ""
    return (
        f"Quantization {plan.quantization}: 16-bit weights would need {plan.vram_fp16_gib} GiB "
        f"loaded and leave too little KV cache on {gpu.name}; {words}{repo} take "
        f"{plan.weights_gib} GiB."
    )


def _parallel_reason(plan: Plan) -> str:
    if plan.tensor_parallel_size == 1:
        spare = plan.gpu_count - 1
        tail = f"; the other {spare} GPU(s) can run more replicas." if spare else "."
        return f"Tensor parallel 1: one GPU holds it{tail}"
    return (
        f"Tensor parallel {plan.tensor_parallel_size}: weights and KV heads are split over "
        f"{plan.tensor_parallel_size} GPUs."
    )


def _context_reason(plan: Plan, model: CatalogModel, workload: Workload) -> str:
    text = plan.max_model_len - plan.images_per_prompt * plan.image_tokens
    line = (
        f"max_model_len {plan.max_model_len}: {plan.images_per_prompt} image(s) x "
        f"{plan.image_tokens} tokens at high detail + {text} prompt and output tokens."
    )
    in_context, _ = context_for(
        model, workload.max_images, workload.output_tokens, plan.image_tokens
    )
    if plan.images_per_prompt < in_context:
        line += (
            f" Only {plan.images_per_prompt} of the {workload.max_images} images asked for fit in "
            f"one request's KV cache on this GPU; send fewer images per request, or pick a larger "
            f"GPU for more."
        )
    elif plan.images_per_prompt < workload.max_images:
        line += (
            f" {model.name}'s {model.text.context}-token context holds only "
            f"{plan.images_per_prompt} of the {workload.max_images} images asked for."
        )
    return line


def _cache_reason(plan: Plan, goal: int) -> str:
    per_token = plan.kv_bytes_per_token // 1024
    line = (
        f"KV cache: {plan.kv_cache_gib} GiB = {plan.kv_cache_tokens} tokens at {per_token} KiB "
        f"per token per GPU, {plan.max_concurrent_images} maximum-size images at once."
    )
    if plan.kv_cache_dtype != "auto":
        line += " fp8 KV entries double what the cache holds."
    if plan.kv_cache_tokens < goal:
        line += f" That is below the workload's {goal} tokens; expect requests to queue."
    return line


def explain(
    plan: Plan, model: CatalogModel, gpu: GPUSpec, workload: Workload, goal: int
) -> list[str]:
    """Why each choice of a plan that fits."""
    return [
        _dtype_reason(plan, gpu),
        _quantization_reason(plan, model, gpu),
        _parallel_reason(plan),
        _context_reason(plan, model, workload),
        _cache_reason(plan, goal),
        (
            f"Reserved per GPU: {plan.activation_reserve_gib} GiB for activations and the vision "
            f"encoder's profiling pass, {plan.overhead_gib} GiB for CUDA context and graphs."
        ),
        (
            f"max_num_seqs {plan.max_num_seqs}: one-image requests the cache holds at once "
            f"(capped at 256); gpu_memory_utilization {plan.gpu_memory_utilization} of "
            f"{gpu.memory_gib:.1f} GiB."
        ),
        *(
            f"Override {name}={value} applied from settings."
            for name, value in plan.overrides.items()
        ),
    ]


def explain_refusal(
    plan: Plan, model: CatalogModel, workload: Workload, suggestion: Plan | None
) -> list[str]:
    """Why nothing fits, and the smallest setup that would."""
    if plan.images_per_prompt == 0 and workload.max_images > 0:
        lines = [
            (
                f"{model.name}'s {model.text.context}-token context cannot hold one "
                f"{plan.image_tokens}-token image plus the prompt and "
                f"{workload.output_tokens} output tokens; lower the expected output length."
            )
        ]
    else:
        lines = [
            (
                f"Does not fit on {plan.gpu}: even with {plan.quantization} weights "
                f"({plan.weights_gib} GiB) and tensor parallel {plan.tensor_parallel_size}, "
                f"one GPU's {plan.budget_gib} GiB budget leaves {plan.kv_cache_gib} GiB of KV "
                f"cache, short of one {plan.max_model_len}-token request."
            )
        ]
    if suggestion is not None:
        lines.append(
            f"Smallest setup that fits: {suggestion.gpu} with "
            f"{suggestion.quantization} weights, tensor parallel "
            f"{suggestion.tensor_parallel_size}."
        )
    else:
        lines.append("No GPU setup vlmserve knows (up to 8x H200) fits this workload.")
    return lines
