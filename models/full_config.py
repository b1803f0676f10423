"""``vlmserve full-config NAME DIR``: a full-size model folder without weights, for benchmarks.

vLLM's ``load_format="dummy"`` fills a model with random weights, so throughput and memory can be
measured on a GPU without downloading a checkpoint. It still needs the real ``config.json``, a
tokenizer and the processor files. This writes them offline: the family's tiny checkpoint is built,
its weights are dropped, its config takes the full model's dimensions (public ``config.json``
values, see ``REFERENCE.md`` section 2), and its tokenizer is padded to the full vocabulary so
every token id the random model samples can be decoded. Prompts tokenize into more tokens than
with the real tokenizer (a few hundred merges instead of tens of thousands); image tokens, which
dominate a VLM's prompt, are exact.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.families import get_family

#: CLIP ViT-L/14-336, LLaVA's vision tower.
CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "projection_dim": 768,
}
#: InternViT-300M-448px.
INTERNVIT_300M = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
}


@dataclass(frozen=True)
class FullSize:
    """One catalogue model's dimensions, as its published ``config.json`` gives them."""

    family: str
    dtype: str
    text: dict[str, Any]
    vision: dict[str, Any]
    #: Extra top-level config keys (none for most models).
    top: dict[str, Any] = field(default_factory=dict)


FULL_SIZES: dict[str, FullSize] = {
    "llava-1.5-7b": FullSize(
        "llava",
        "float16",
        {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
         "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
        CLIP_L_336,
    ),
    "llava-1.5-13b": FullSize(
        "llava",
        "float16",
        {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
         "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32064,
         "max_position_embeddings": 4096, "rms_norm_eps": 1e-5},
        CLIP_L_336,
    ),
    "llava-1.6-mistral-7b": FullSize(
        "llava-next",
        "bfloat16",
        {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32064,
         "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
         "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}},
        CLIP_L_336,
    ),
    "internvl2-1b": FullSize(
        "internvl",
        "bfloat16",
        {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
         "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151655,
         "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
         "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}},
        INTERNVIT_300M,
    ),
}  # fmt: skip


def pad_tokenizer(tokenizer_file: Path, vocab_size: int) -> int:
    """Append never-produced filler tokens until the vocabulary has ``vocab_size`` entries.

    They go into the BPE vocabulary without merges, so encoding never yields them and decoding
    gives ``<filler123>`` (plain ASCII survives the byte-level decoder unchanged).
    """
    data = json.loads(tokenizer_file.read_text())
    vocab: dict[str, int] = data["model"]["vocab"]
    used = set(vocab.values()) | {t["id"] for t in data.get("added_tokens", [])}
    for token_id in range(vocab_size):
        if token_id not in used:
            vocab[f"<filler{token_id}>"] = token_id
    tokenizer_file.write_text(json.dumps(data, ensure_ascii=False))
    return len(vocab)


def full_config(tiny_config: dict[str, Any], size: FullSize) -> dict[str, Any]:
    """The tiny checkpoint's config with the full model's dimensions."""
    config = json.loads(json.dumps(tiny_config))
    text = config["text_config"]
    # Per-layer lists sized for the tiny model; transformers rebuilds them from the layer count.
    text.pop("layer_types", None)
    text.update(size.text)
    text["head_dim"] = text["hidden_size"] // text["num_attention_heads"]
    config["vision_config"].update(size.vision)
    config.update(size.top)
    config["dtype"] = size.dtype
    if "tie_word_embeddings" in size.text:
        config["tie_word_embeddings"] = size.text["tie_word_embeddings"]
    return config


def write_full_config(name: str, out_dir: Path) -> Path:
    """Write config, tokenizer and processor files (no weights) for catalogue model ``name``."""
    size = FULL_SIZES[name]
    with tempfile.TemporaryDirectory() as tmp:
        tiny = get_family(size.family).build_tiny(Path(tmp) / "tiny")
        out_dir.mkdir(parents=True, exist_ok=True)
        for file in tiny.iterdir():
            if file.suffix != ".safetensors" and file.name != "vlmserve_tiny.json":
                shutil.copy(file, out_dir / file.name)
    config = full_config(json.loads((out_dir / "config.json").read_text()), size)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    pad_tokenizer(out_dir / "tokenizer.json", size.text["vocab_size"])
    marker = {"full_size_config": name, "weights": "none: serve with load_format=dummy"}
    (out_dir / "vlmserve_full_config.json").write_text(json.dumps(marker) + "\n")
    return out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments: the catalogue name and the output folder."""
    parser.add_argument("name", choices=sorted(FULL_SIZES), help="Catalogue model.")
    parser.add_argument("out_dir", type=Path, help="Folder to write the configuration into.")


def run(args: argparse.Namespace) -> int:
    """Write the folder and say how to serve it."""
    path = write_full_config(args.name, args.out_dir)
    print(f"wrote a full-size {args.name} configuration (no weights) to {path}")
    print(f"serve it with: vlmserve serve --engine vllm --load-format dummy --model {path}")
    return 0
