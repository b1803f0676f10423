"""``vlmserve full-config NAME DIR``: a full-size model folder without weights, for benchmarks.

vLLM's ``load_format="dummy"`` fills a model with random weights, so throughput and memory can be
measured on a GPU without downloading a checkpoint. It still needs the real ``config.json``, a
tokenizer and the processor files. For families in transformers' layout (LLaVA, LLaVA-NeXT) this
writes them offline: the family's tiny checkpoint is built, its weights are dropped, its config
takes the catalogue's dimensions, and its tokenizer is padded to the full vocabulary so every
token id the random model samples can be decoded. Prompts tokenize into more tokens than with the
real tokenizer (a few hundred merges instead of tens of thousands); image tokens, which dominate a
VLM's prompt, are exact. Families in an original layout (InternVL-2, Phi-3-V) write their own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from vlmserve.models.architecture import LanguageModel, VisionTower
from vlmserve.models.catalog import CATALOG, get_model
from vlmserve.models.families import get_family

#: Weight dtype written into the config (vLLM's ``dtype="auto"`` reads it).
CONFIG_DTYPE = "float16"


def text_dimensions(text: LanguageModel) -> dict[str, Any]:
    """A catalogue language model as ``text_config`` fields."""
    return {
        "hidden_size": text.hidden,
        "intermediate_size": text.intermediate,
        "num_hidden_layers": text.layers,
        "num_attention_heads": text.heads,
        "num_key_value_heads": text.kv_heads,
        "head_dim": text.head_dim,
        "vocab_size": text.vocab,
        "max_position_embeddings": text.context,
        "tie_word_embeddings": text.tie_embeddings,
    }


def vision_dimensions(vision: VisionTower) -> dict[str, Any]:
    """A catalogue vision tower as ``vision_config`` fields (image and patch sizes stay)."""
    return {
        "hidden_size": vision.hidden,
        "intermediate_size": vision.intermediate,
        "num_hidden_layers": vision.layers,
        "num_attention_heads": vision.heads,
    }


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


def full_config(tiny_config: dict[str, Any], name: str) -> dict[str, Any]:
    """The tiny checkpoint's config with catalogue model ``name``'s dimensions."""
    model = get_model(name)
    config = json.loads(json.dumps(tiny_config))
    text = config["text_config"]
    # Per-layer lists sized for the tiny model; transformers rebuilds them from the layer count.
    text.pop("layer_types", None)
    text.update(text_dimensions(model.text))
    config["vision_config"].update(vision_dimensions(model.vision))
    config["tie_word_embeddings"] = model.text.tie_embeddings
    config["dtype"] = CONFIG_DTYPE
    return config


def write_full_config(name: str, out_dir: Path) -> Path:
    """Write config, tokenizer and processor files (no weights) for catalogue model ``name``.

    Families in an original (non-transformers) layout write their own files; the others get
    their tiny checkpoint with the full dimensions.
    """
    model = get_model(name)
    family = get_family(model.family)
    own_writer = getattr(family, "full_config", None)
    if own_writer is not None:
        return Path(own_writer(out_dir, name))
    with tempfile.TemporaryDirectory() as tmp:
        tiny = family.build_tiny(Path(tmp) / "tiny")
        out_dir.mkdir(parents=True, exist_ok=True)
        for file in tiny.iterdir():
            if file.suffix != ".safetensors" and file.name != "vlmserve_tiny.json":
                shutil.copy(file, out_dir / file.name)
    config = full_config(json.loads((out_dir / "config.json").read_text()), name)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    pad_tokenizer(out_dir / "tokenizer.json", model.text.vocab)
    marker = {"full_size_config": name, "weights": "none: serve with load_format=dummy"}
    (out_dir / "vlmserve_full_config.json").write_text(json.dumps(marker) + "\n")
    return out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments: the catalogue name and the output folder."""
    parser.add_argument("name", choices=sorted(CATALOG), help="Catalogue model.")
    parser.add_argument("out_dir", type=Path, help="Folder to write the configuration into.")


def run(args: argparse.Namespace) -> int:
    """Write the folder and say how to serve it."""
    try:
        path = write_full_config(args.name, args.out_dir)
    except KeyError as exc:
        print(f"vlmserve full-config: {exc.args[0]}", file=sys.stderr)
        return 2
    print(f"wrote a full-size {args.name} configuration (no weights) to {path}")
    print(f"serve it with: vlmserve serve --engine vllm --load-format dummy --model {path}")
    return 0
