"""The planner: size a catalogue model to the GPUs at hand for a given image workload.

:func:`plan_model` is one pure function from (model, GPUs, workload, overrides) to a
:class:`Plan`: dtype, quantization, tensor-parallel size, context length, batch size, memory share,
images per prompt and KV-cache dtype, with the numbers behind them and a sentence or two on each
choice. Quality comes first: the search tries 16-bit weights before fp8, a published AWQ/GPTQ
checkpoint before in-flight bitsandbytes, and takes the first that meets the workload.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from vlmserve.models.catalog import CatalogModel, max_image_tokens
from vlmserve.planner.explain import explain, explain_refusal
from vlmserve.planner.gpus import GPU_CATALOG, GPUSpec, describe_gpus
from vlmserve.planner.memory import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DTYPE_BYTES,
    GIB,
    KV_DTYPE_BYTES,
    MemorySplit,
    activation_bytes,
    batched_tokens_for,
    context_for,
    overhead_bytes,
    weight_bytes,
)
from vlmserve.planner.plan import Overrides, Plan, Workload

#: Without a concurrency target, the cache should hold this many maximum-size images at once,
#: enough for a few image requests to run side by side.
DEFAULT_CACHED_IMAGES = 4
#: vLLM's own ceiling on sequences per step for GPUs under 70 GiB (its OpenAI-server default).
MAX_NUM_SEQS_CAP = 256
TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: weight format, tensor parallelism and KV-cache dtype."""

    quantization: str
    tensor_parallel_size: int
    kv_cache_dtype: str
    dtype: str


def gib(value: float) -> float:
    """Bytes as GiB, rounded to two decimals for display and JSON."""
    return round(value / GIB, 2)


def fp16_footprint_bytes(model: CatalogModel, image_tokens: int) -> int:
    """Memory the model takes loaded in 16 bits before any KV cache, on a single GPU.

    This is what the source guide's "VRAM (FP16)" column measures: weights, the profiling
    reserve at vLLM's small-GPU batch size, and the runtime overhead.
    """
    batched = batched_tokens_for(0, "")
    return (
        weight_bytes(model, "none")
        + activation_bytes(model, batched, MAX_NUM_SEQS_CAP, image_tokens, 2)
        + overhead_bytes()
    )


def goal_tokens(workload: Workload, image_tokens: int, max_model_len: int) -> int:
    """KV-cache tokens the workload wants: its concurrency in one-image requests, or
    :data:`DEFAULT_CACHED_IMAGES` maximum-size images, and never less than one full request."""
    if workload.concurrency:
        wanted = workload.concurrency * workload.request_tokens(1, image_tokens)
    else:
        wanted = DEFAULT_CACHED_IMAGES * image_tokens
    return max(max_model_len, wanted)


def candidates(
    model: CatalogModel, gpu: GPUSpec, count: int, overrides: Overrides
) -> list[Candidate]:
    """Ways to run the model on ``count`` of ``gpu``, best quality first."""
    wide = "bfloat16" if gpu.bf16 else "float16"
    methods = ["none"]
    if gpu.fp8:
        methods.append("fp8")
    methods += [q.method for q in model.quantized]
    methods.append("bitsandbytes")
    if overrides.quantization:
        methods = [overrides.quantization]
    tps = [t for t in TP_SIZES if t <= count and model.text.heads % t == 0]
    if overrides.tensor_parallel_size:
        tps = [overrides.tensor_parallel_size]
    kv_dtypes = ["auto", "fp8"] if gpu.fp8 else ["auto"]
    found = []
    for method in methods:
        # AWQ and GPTQ kernels take float16 activations (vllm-project/vllm#11122).
        dtype = "float16" if method in ("awq", "gptq") else wide
        for kv in kv_dtypes:
            for tp in tps:
                found.append(Candidate(method, tp, kv, overrides.dtype or dtype))
    return found


def memory_split(
    model: CatalogModel, gpu: GPUSpec, cand: Candidate, gmu: float, batched: int, image_tokens: int
) -> MemorySplit:
    """One GPU's budget under ``cand``."""
    dtype_bytes = DTYPE_BYTES.get(cand.dtype, 2)
    weights = weight_bytes(model, cand.quantization) * dtype_bytes // 2
    return MemorySplit(
        budget=int(gpu.memory_bytes * gmu),
        weights=weights // cand.tensor_parallel_size,
        activations=activation_bytes(model, batched, MAX_NUM_SEQS_CAP, image_tokens, dtype_bytes),
        overhead=overhead_bytes(),
    )


def kv_tokens(model: CatalogModel, split: MemorySplit, cand: Candidate) -> int:
    """Tokens the KV cache holds across all GPUs of the candidate."""
    per_token = model.text.kv_bytes_per_token(
        KV_DTYPE_BYTES[cand.kv_cache_dtype], cand.tensor_parallel_size
    )
    return split.kv_cache // per_token


def search(
    model: CatalogModel, gpus: list[GPUSpec], workload: Workload, overrides: Overrides
) -> Plan:
    """The plan for the most images per request (up to what was asked) that fits in memory.

    Serving one image per request beats refusing to serve: when a request with every image asked
    for does not fit in the KV cache, fewer images per request are tried, and the plan says so.
    """
    image_tokens = max_image_tokens(model)
    wanted, _ = context_for(model, workload.max_images, workload.output_tokens, image_tokens)
    plan = _search_images(model, gpus, workload, overrides, wanted)
    for images in range(wanted - 1, 0, -1):
        if plan.fits:
            break
        plan = _search_images(model, gpus, workload, overrides, images)
    return plan


def _search_images(
    model: CatalogModel, gpus: list[GPUSpec], workload: Workload, overrides: Overrides, images: int
) -> Plan:
    """The first candidate that meets the workload, else the first that fits, else a refusal."""
    gpu = min(gpus, key=lambda g: (g.memory_mib, g.compute_capability))
    image_tokens = max_image_tokens(model)
    images, max_model_len = context_for(model, images, workload.output_tokens, image_tokens)
    if overrides.max_model_len:
        max_model_len = overrides.max_model_len
    gmu = overrides.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    batched = batched_tokens_for(gpu.memory_gib, gpu.name)
    goal = goal_tokens(workload, image_tokens, max_model_len)
    options = candidates(model, gpu, len(gpus), overrides)
    fitting = None
    for cand in options:
        split = memory_split(model, gpu, cand, gmu, batched, image_tokens)
        tokens = kv_tokens(model, split, cand)
        if tokens >= goal:
            fitting = (cand, split, tokens)
            break
        if fitting is None and tokens >= max_model_len:
            fitting = (cand, split, tokens)
    if images == 0 and workload.max_images > 0:
        fitting = None
    chosen = fitting or _best_effort(model, gpu, options, gmu, batched, image_tokens)
    cand, split, tokens = chosen
    return _assemble(
        model,
        gpu,
        gpus,
        workload,
        cand,
        split,
        tokens,
        fits=fitting is not None,
        goal=goal,
        images=images,
        max_model_len=max_model_len,
        batched=batched,
        gmu=gmu,
        image_tokens=image_tokens,
        overrides=overrides,
    )


def _best_effort(
    model: CatalogModel,
    gpu: GPUSpec,
    options: list[Candidate],
    gmu: float,
    batched: int,
    image_tokens: int,
) -> tuple[Candidate, MemorySplit, int]:
    """For a refusal: the candidate that comes closest (least shortfall, then most KV)."""
    scored = []
    for cand in options:
        split = memory_split(model, gpu, cand, gmu, batched, image_tokens)
        scored.append((split.shortfall, -split.kv_cache, cand, split))
    if not scored:
        fallback = Candidate("none", 1, "auto", "bfloat16" if gpu.bf16 else "float16")
        split = memory_split(model, gpu, fallback, gmu, batched, image_tokens)
        return fallback, split, kv_tokens(model, split, fallback)
    _, _, cand, split = min(scored, key=lambda s: (s[0], s[1]))
    return cand, split, kv_tokens(model, split, cand)


def _assemble(
    model: CatalogModel,
    gpu: GPUSpec,
    gpus: list[GPUSpec],
    workload: Workload,
    cand: Candidate,
    split: MemorySplit,
    tokens: int,
    *,
    fits: bool,
    goal: int,
    images: int,
    max_model_len: int,
    batched: int,
    gmu: float,
    image_tokens: int,
    overrides: Overrides,
) -> Plan:
    tp = cand.tensor_parallel_size
    one_request = workload.request_tokens(1, image_tokens)
    seqs = max(1, min(MAX_NUM_SEQS_CAP, max(workload.concurrency or 1, tokens // one_request)))
    quantized = model.quantized_repo(cand.quantization)
    plan = Plan(
        model=model.name,
        repo=quantized.repo if quantized else model.repo,
        gpu=describe_gpus(gpus),
        gpu_count=len(gpus),
        fits=fits,
        dtype=cand.dtype,
        quantization=cand.quantization,
        tensor_parallel_size=tp,
        kv_cache_dtype=cand.kv_cache_dtype,
        max_model_len=max_model_len,
        max_num_seqs=overrides.max_num_seqs or seqs,
        max_num_batched_tokens=batched,
        gpu_memory_utilization=gmu,
        images_per_prompt=images,
        image_tokens=image_tokens,
        vram_fp16_gib=gib(fp16_footprint_bytes(model, image_tokens)),
        weights_gib=gib(split.weights * tp),
        activation_reserve_gib=gib(split.activations),
        overhead_gib=gib(split.overhead),
        budget_gib=gib(split.budget),
        kv_bytes_per_token=model.text.kv_bytes_per_token(KV_DTYPE_BYTES[cand.kv_cache_dtype], tp),
        kv_cache_gib=gib(split.kv_cache * tp),
        kv_cache_tokens=tokens,
        max_concurrent_images=tokens // image_tokens,
        meets_workload=fits and tokens >= goal,
        overrides=overrides.given(),
    )
    if fits:
        plan.explanation = explain(plan, model, gpu, workload, goal)
    return plan


@functools.lru_cache(maxsize=256)
def suggest(model: CatalogModel, workload: Workload) -> Plan | None:
    """The smallest catalogue GPU setup (fewest, then smallest GPUs) the model fits on."""
    for count in TP_SIZES:
        for gpu in sorted(GPU_CATALOG, key=lambda g: g.memory_mib):
            found = search(model, [gpu] * count, workload, Overrides())
            if found.fits and found.tensor_parallel_size == count:
                return found
    return None


def plan_model(
    model: CatalogModel, gpus: list[GPUSpec], workload: Workload, overrides: Overrides | None = None
) -> Plan:
    """Size ``model`` for ``gpus`` and ``workload``; ``overrides`` fix choices the operator set.

    Never raises for a model that does not fit: the plan says ``fits: false`` and why.
    """
    if not gpus:
        raise ValueError("no GPU to plan for: name one with --gpu (for example A10G or 2xA10G)")
    plan = search(model, gpus, workload, overrides or Overrides())
    if not plan.fits:
        plan.explanation = explain_refusal(plan, model, workload, suggest(model, workload))
    return plan
