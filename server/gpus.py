"""The GPUs on this machine, read with nvidia-ml-py. No GPU (or no driver) is a normal answer."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectedGPU:
    """One GPU as NVML reports it."""

    name: str
    memory_bytes: int
    compute_capability: tuple[int, int]


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
