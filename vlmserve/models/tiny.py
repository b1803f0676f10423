"""Shared pieces for building tiny random-weight checkpoints offline.

Tiny checkpoints keep the real architecture classes and the real image geometry (CLIP 336/14,
InternViT 448/14), so image-token counts match the full-size models, while every other dimension is
shrunk until a checkpoint is a few hundred kilobytes and generates in milliseconds on a CPU.
The tokenizer is a byte-level BPE trained here, with the family's special tokens.
"""

from __future__ import annotations

import itertools
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

#: Small text dimensions shared by every tiny language model. Heads are 32 wide: the narrowest
#: vLLM's CPU attention kernels take (16 starts, then fails on the first request).
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 8192,
}
#: Small vision-tower dimensions (the image and patch sizes stay real).
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
VOCAB_SIZE = 512
SEED = 0

_WORDS = (
    "a an the image picture photo shows cat dog red blue green car tree house person sky sea "
    "describe what is in this please answer question chart table text document left right top "
    "bottom small large color number one two three yes no there are of on with and to it"
).split()


def _corpus() -> list[str]:
    """Deterministic English-like lines to train the tiny tokenizer on, and JSON objects, so
    that structured output (braces, quotes, digits) can be written with the vocabulary."""
    lines = []
    for a, b, c in itertools.islice(itertools.product(_WORDS, repeat=3), 6000):
        lines.append(f"{a} {b} {c}. {a.capitalize()}, {c}?")
    for i, (a, b) in enumerate(itertools.islice(itertools.product(_WORDS, repeat=2), 600)):
        flag = "true" if i % 2 else "false"
        lines.append(f'{{"{a}": "{b}", "n": {i % 10}, "ok": {flag}, "x": [null]}}')
    return lines


def train_tokenizer(
    special_tokens: list[str],
    *,
    bos: str,
    eos: str,
    unk: str,
    pad: str,
    extra_special_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer offline and wrap it for transformers.

    The alphabet is printable ASCII (whatever the corpus holds), so random weights sample
    readable fragments instead of stray UTF-8 bytes, and every JSON character has a token (a
    grammar can force any JSON); characters outside it encode as ``unk``.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_tokens,
        initial_alphabet=list(string.printable),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return wrap_tokenizer(tokenizer, bos, eos, unk, pad, extra_special_tokens)


def wrap_tokenizer(
    tokenizer: Tokenizer,
    bos: str,
    eos: str,
    unk: str,
    pad: str,
    extra_special_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A ``tokenizers`` tokenizer as transformers' fast tokenizer with its special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        extra_special_tokens=extra_special_tokens or {},
    )


def save_checkpoint(
    out_dir: Path,
    model_class: type[PreTrainedModel],
    config: Any,
    processor: ProcessorMixin,
    *,
    eos_token_id: int,
    rename: Callable[[str], str] | None = None,
) -> Path:
    """Instantiate random weights for ``config`` and save model and processor to ``out_dir``.

    ``rename`` maps the weight names transformers saves to the names the published checkpoints
    use, where the two differ.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = model_class(config).eval()
    model.generation_config.eos_token_id = eos_token_id
    model.save_pretrained(out_dir)
    if rename is not None:
        _rename_weights(out_dir / "model.safetensors", rename)
    processor.save_pretrained(out_dir)
    (out_dir / "vlmserve_tiny.json").write_text(json.dumps({"tiny": True}) + "\n")
    return out_dir


def _rename_weights(path: Path, rename: Callable[[str], str]) -> None:
    """Rewrite one safetensors file with every tensor under its renamed name."""
    from safetensors.torch import load_file, save_file

    tensors = {rename(name): tensor for name, tensor in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})
