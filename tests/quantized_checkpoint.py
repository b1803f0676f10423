"""Tiny AWQ and GPTQ checkpoints, written offline from the tests' tiny LLaVA.

The language model's linear layers (attention and MLP projections of every decoder layer) are
quantized to 4 bits by rounding to nearest, per group of ``GROUP_SIZE`` inputs, and packed in each
format's own layout, as AutoAWQ and AutoGPTQ save them; ``config.json`` gets the
``quantization_config`` those tools write. The embeddings, ``lm_head``, the vision tower and the
projector stay as they are: vLLM finds the unquantized layers from the safetensors dtypes
(``maybe_update_config`` in vLLM's ``auto_awq.py`` and ``auto_gptq.py``), as in published
LLaVA AWQ checkpoints. The tiny weights are random, so the 4-bit values are random too.

Layouts (a linear layer's weight ``W`` is ``[out, in]``; ``G`` groups of inputs):

- AWQ (GEMM version): ``qweight`` int32 ``[in, out/8]``, eight output columns per int32 in the
  order 0, 2, 4, 6, 1, 3, 5, 7; ``qzeros`` int32 ``[G, out/8]`` packed the same way; ``scales``
  ``[G, out]``. ``W[o, i] = (q - zero) * scale``.
- GPTQ (4-bit, symmetric, ``desc_act`` false): ``qweight`` int32 ``[in/8, out]``, eight input rows
  per int32 in order; ``qzeros`` int32 ``[G, out/8]`` holding ``zero - 1`` (AutoGPTQ's v1 format;
  the symmetric zero is 8); ``scales`` ``[G, out]``; ``g_idx`` int32 ``[in]``, each input's group.
  ``W[o, i] = (q - 8) * scale``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

#: Inputs per quantization group: divides the tiny model's 64 and 128 inputs, and is even, as
#: vLLM's CPU kernel wants (CPUWNA16LinearKernel.can_implement).
GROUP_SIZE = 32
BITS = 4
PACK = 32 // BITS
#: AutoAWQ's order of output columns within one int32 (nibble k holds column AWQ_ORDER[k]).
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
#: The language model's linear layers, by the end of their weight names.
QUANTIZED_LAYERS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
#: Quantized checkpoints are rebuilt when this changes (bump with the packing below).
QUANT_VERSION = 1
#: Activations the 4-bit kernels take (vLLM: float16 or bfloat16; the tiny LLaVA is float32).
DTYPE = torch.float16


def is_quantized(name: str) -> bool:
    """Whether the weight ``name`` belongs to a language-model linear layer that is quantized."""
    return name.startswith("language_model.") and any(
        name.endswith(f"{layer}.weight") for layer in QUANTIZED_LAYERS
    )


def pack_columns(values: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Pack 4-bit ``values`` ``[rows, cols]`` into int32 ``[rows, cols/8]`` along the columns;
    nibble ``k`` of each int32 holds column ``order[k]`` of its group of eight."""
    rows, cols = values.shape
    groups = values.to(torch.int64).reshape(rows, cols // PACK, PACK)
    packed = torch.zeros(rows, cols // PACK, dtype=torch.int64)
    for nibble, column in enumerate(order):
        packed |= groups[:, :, column] << (BITS * nibble)
    return _as_int32(packed)


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit ``values`` ``[rows, cols]`` into int32 ``[rows/8, cols]`` along the rows, in
    order (nibble ``k`` holds row ``k`` of each group of eight)."""
    return pack_columns(values.T, tuple(range(PACK))).T.contiguous()


def _as_int32(packed: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit words as the int32 the checkpoints store (same bits)."""
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def quantize_asymmetric(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AWQ's rounding: ``(q [in, out], zeros [G, out], scales [G, out])`` of ``weight [out, in]``,
    each group of inputs mapped from its min..max onto 0..15."""
    grouped = weight.T.float().reshape(-1, GROUP_SIZE, weight.shape[0])  # [G, group, out]
    low, high = grouped.amin(dim=1), grouped.amax(dim=1)
    scales = ((high - low) / 15).clamp(min=1e-8)
    zeros = torch.round(-low / scales).clamp(0, 15)
    q = torch.round(grouped / scales[:, None, :] + zeros[:, None, :]).clamp(0, 15)
    return q.reshape(weight.shape[1], weight.shape[0]), zeros, scales


def quantize_symmetric(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ's symmetric 4-bit grid: ``(q [in, out], scales [G, out])`` of ``weight [out, in]``,
    ``q - 8`` in -8..7."""
    grouped = weight.T.float().reshape(-1, GROUP_SIZE, weight.shape[0])
    scales = (grouped.abs().amax(dim=1) / 7).clamp(min=1e-8)
    q = torch.round(grouped / scales[:, None, :] + 8).clamp(0, 15)
    return q.reshape(weight.shape[1], weight.shape[0]), scales


def awq_tensors(prefix: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """One linear layer's AWQ tensors (``prefix`` is its name without ``.weight``)."""
    q, zeros, scales = quantize_asymmetric(weight)
    return {
        f"{prefix}.qweight": pack_columns(q, AWQ_ORDER),
        f"{prefix}.qzeros": pack_columns(zeros, AWQ_ORDER),
        f"{prefix}.scales": scales.to(DTYPE),
    }


def gptq_tensors(prefix: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """One linear layer's GPTQ tensors (``prefix`` is its name without ``.weight``)."""
    q, scales = quantize_symmetric(weight)
    groups, out = scales.shape
    inputs = weight.shape[1]
    return {
        f"{prefix}.qweight": pack_rows(q),
        f"{prefix}.qzeros": pack_columns(torch.full((groups, out), 8 - 1), tuple(range(PACK))),
        f"{prefix}.scales": scales.to(DTYPE),
        f"{prefix}.g_idx": torch.arange(inputs, dtype=torch.int32) // GROUP_SIZE,
    }


QUANTIZATION_CONFIGS = {
    # As AutoAWQ writes it (transformers' AwqConfig fields).
    "awq": {
        "quant_method": "awq",
        "bits": BITS,
        "group_size": GROUP_SIZE,
        "zero_point": True,
        "version": "gemm",
    },
    # As AutoGPTQ / optimum write it.
    "gptq": {
        "quant_method": "gptq",
        "bits": BITS,
        "group_size": GROUP_SIZE,
        "desc_act": False,
        "sym": True,
        "true_sequential": True,
        "damp_percent": 0.01,
        "static_groups": False,
        "lm_head": False,
        "checkpoint_format": "gptq",
    },
}
_PACKERS = {"awq": awq_tensors, "gptq": gptq_tensors}


def write_quantized(source: Path, out: Path, method: str) -> Path:
    """Write ``source`` (a tiny LLaVA folder) quantized with ``method`` (awq or gptq) to ``out``.

    Every other file is copied as it is; the weights that stay unquantized are cast to float16,
    the dtype published 4-bit checkpoints carry.
    """
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    tensors: dict[str, torch.Tensor] = {}
    for name, weight in load_file(source / "model.safetensors").items():
        if is_quantized(name):
            tensors.update(_PACKERS[method](name.removesuffix(".weight"), weight))
        else:
            tensors[name] = weight.to(DTYPE)
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["dtype"] = "float16"
    config["text_config"]["dtype"] = "float16"
    config["quantization_config"] = QUANTIZATION_CONFIGS[method]
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tmp.rename(out)
    return out


def quantized_checkpoint(source: Path, method: str) -> Path:
    """The ``method`` variant of the tiny checkpoint ``source``, next to it, built on first use."""
    out = source.with_name(f"{source.name}-{method}-q{QUANT_VERSION}")
    return write_quantized(source, out, method)
