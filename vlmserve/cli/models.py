"""``vlmserve models [--json]``: the model catalogue as a table."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vlmserve.models.catalog import CATALOG, CatalogModel, max_image_tokens

GIB = 1024**3
COLUMNS = (
    "name",
    "repo",
    "family",
    "params_b",
    "fp16_gib",
    "kv_kib_per_token",
    "max_image_tokens",
    "context",
    "quantized",
    "min_gpu",
    "recommended_gpu",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments: the output format."""
    parser.add_argument("--json", action="store_true", help="Print a JSON list instead.")


def describe(model: CatalogModel) -> dict[str, Any]:
    """One catalogue row: identity, computed size and the source guide's hardware row."""
    row = model.hardware
    return {
        "name": model.name,
        "repo": model.repo,
        "family": model.family,
        "params_b": round(model.params() / 1e9, 2),
        "fp16_gib": round(model.params() * 2 / GIB, 1),
        "kv_kib_per_token": model.text.kv_bytes_per_token(2) // 1024,
        "max_image_tokens": max_image_tokens(model),
        "context": model.text.context,
        "quantized": ",".join(f"{q.method}:{q.repo}" for q in model.quantized) or "-",
        "min_gpu": row.minimum_gpu if row else "-",
        "recommended_gpu": row.recommended_gpu if row else "-",
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as aligned text columns."""
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    """Print the catalogue."""
    rows = [describe(m) for m in CATALOG.values()]
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0
