"""GPUs: the ones on this machine (read with nvidia-ml-py) and the ones the planner knows by name.

No GPU (or no driver) is a normal answer. A GPU is named by a spec such as ``A10G``, ``RTX3060``,
``A100-40GB`` or ``2xA10G`` (case, spaces and dashes do not matter); a detected GPU is matched to
the catalogue by its NVML name, and an unknown one is planned from what NVML reports.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class DetectedGPU:
    """One GPU as NVML reports it."""

    name: str
    memory_bytes: int
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model the planner sizes for: its usable memory and compute capability.

    bf16 and fp8 support follow from the compute capability (bf16 from Ampere, 8.0; fp8 tensor
    cores from Ada and Hopper, 8.9), so they are derived here rather than stored twice.
    """

    name: str
    memory_mib: int
    compute_capability: tuple[int, int]
    #: Extra spellings a spec may use ("A10" for "A10G"); matched after normalisation.
    aliases: tuple[str, ...] = ()

    @property
    def memory_bytes(self) -> int:
        """Total memory in bytes, as CUDA reports it."""
        return self.memory_mib * MIB

    @property
    def memory_gib(self) -> float:
        """Total memory in GiB."""
        return self.memory_mib / 1024

    @property
    def bf16(self) -> bool:
        """Whether the GPU computes in bfloat16."""
        return self.compute_capability >= (8, 0)

    @property
    def fp8(self) -> bool:
        """Whether the GPU has fp8 tensor cores (what vLLM's fp8 W8A8 path needs)."""
        return self.compute_capability >= (8, 9)


# Memory is the total nvidia-smi / NVML reports. T4, A10(G), L4, A100 and H100 totals are the
# figures listed in modal-labs/modal-client#2797; the GeForce cards and H200 are their nominal
# sizes in MiB (12, 8 and 16 GiB; 141 GB = 143,771 MiB as H200 reports it). Compute
# capabilities are NVIDIA's CUDA GPU list, as in REFERENCE.md section 3.
GPU_CATALOG: tuple[GPUSpec, ...] = (
    GPUSpec("RTX 3070", 8192, (8, 6)),
    GPUSpec("RTX 3060", 12288, (8, 6)),
    GPUSpec("T4", 15360, (7, 5)),
    GPUSpec("RTX 4080", 16376, (8, 9)),
    GPUSpec("A10G", 23028, (8, 6), aliases=("A10",)),
    GPUSpec("L4", 23034, (8, 9)),
    GPUSpec("A100-40GB", 40960, (8, 0), aliases=("A100", "A10040G")),
    GPUSpec("A100-80GB", 81920, (8, 0), aliases=("A10080G",)),
    GPUSpec("H100", 81559, (9, 0), aliases=("H10080GB",)),
    GPUSpec("H200", 143771, (9, 0), aliases=("H200141GB",)),
)

_COUNT = re.compile(r"^(\d+)\s*[x*×]\s*(.+)$", re.IGNORECASE)


def _key(text: str) -> str:
    """A name reduced to upper-case letters and digits, so ``rtx-3060`` matches ``RTX 3060``."""
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def _by_key() -> dict[str, GPUSpec]:
    table: dict[str, GPUSpec] = {}
    for gpu in GPU_CATALOG:
        for spelling in (gpu.name, *gpu.aliases):
            table[_key(spelling)] = gpu
    return table


def gpu_by_name(name: str) -> GPUSpec:
    """The catalogue GPU called ``name``; ``KeyError`` lists the known ones."""
    found = _by_key().get(_key(name))
    if found is None:
        known = ", ".join(g.name for g in GPU_CATALOG)
        raise KeyError(f"unknown GPU {name!r}; known: {known}")
    return found


def parse_gpu_spec(spec: str) -> list[GPUSpec]:
    """The GPUs a spec names: ``A10G`` is one, ``2xA10G`` two; ``ValueError`` when unknown.

    A plain ``A100`` means the 40 GB card, the smaller one, so a plan never assumes memory the
    user may not have.
    """
    text = spec.strip()
    count = 1
    match = _COUNT.match(text)
    if match:
        count, text = int(match.group(1)), match.group(2)
    if count < 1:
        raise ValueError(f"GPU spec {spec!r}: the count must be at least 1")
    try:
        gpu = gpu_by_name(text)
    except KeyError as exc:
        raise ValueError(f"GPU spec {spec!r}: {exc.args[0]}") from None
    return [gpu] * count


def match_detected(detected: DetectedGPU) -> GPUSpec:
    """The catalogue entry for a detected GPU, or a spec built from what NVML reports.

    NVML names look like ``NVIDIA A10G`` or ``NVIDIA H100 80GB HBM3``; the longest catalogue
    name found in the reported name wins. The memory is always the detected one.
    """
    reported = _key(detected.name)
    # A catalogue name must not run on into more digits: "L4" is not in "L40S", "A10" not in "A100".
    candidates = [
        (len(key), gpu)
        for key, gpu in _by_key().items()
        if re.search(re.escape(key) + r"(?!\d)", reported)
    ]
    memory_mib = detected.memory_bytes // MIB
    if candidates:
        best = max(candidates, key=lambda item: item[0])[1]
        if best.name.startswith("A100"):
            best = gpu_by_name("A100-80GB" if memory_mib > 50 * 1024 else "A100-40GB")
        return GPUSpec(best.name, memory_mib, detected.compute_capability)
    return GPUSpec(detected.name, memory_mib, detected.compute_capability)


def describe_gpus(gpus: list[GPUSpec]) -> str:
    """``2x A10G`` for two of a kind, names joined by ``+`` otherwise; ``no GPU`` when empty."""
    if not gpus:
        return "no GPU"
    names = {g.name for g in gpus}
    if len(names) == 1:
        return gpus[0].name if len(gpus) == 1 else f"{len(gpus)}x {gpus[0].name}"
    return " + ".join(g.name for g in gpus)


def detect_gpus() -> list[DetectedGPU]:
    """The visible NVIDIA GPUs; an empty list when there is no driver or no device."""
    try:
        import pynvml
    except ImportError:
        logger.debug("nvidia-ml-py is not installed; assuming no GPU")
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        logger.debug("NVML unavailable (%s); assuming no GPU", exc)
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(DetectedGPU(str(name), int(memory), (int(major), int(minor))))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def gpus_to_plan_for(spec: str | None) -> list[GPUSpec]:
    """The GPUs a ``--gpu`` spec names, or the ones detected when there is no spec."""
    return parse_gpu_spec(spec) if spec else [match_detected(g) for g in detect_gpus()]
