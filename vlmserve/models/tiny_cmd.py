"""``vlmserve tiny-model FAMILY DIR``: write a tiny random-weight checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmserve.models.families import FAMILIES, get_family


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments: the family and the output folder."""
    parser.add_argument("family", choices=sorted(FAMILIES), help="Model family.")
    parser.add_argument("out_dir", type=Path, help="Folder to write the checkpoint into.")


def run(args: argparse.Namespace) -> int:
    """Build the checkpoint and say where it is."""
    path = get_family(args.family).build_tiny(args.out_dir)
    print(f"wrote a tiny {args.family} checkpoint to {path}")
    return 0
