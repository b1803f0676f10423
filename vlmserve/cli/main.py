"""The ``vlmserve`` console script: one entry point, one subcommand per job.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so ``vlmserve plan``
never pays for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("vlmserve.cli.serve", "Start the OpenAI-compatible server."),
    "tiny-model": (
        "vlmserve.models.tiny_cmd",
        "Write a tiny random-weight checkpoint for a model family.",
    ),
    "models": ("vlmserve.cli.models", "List the model catalogue with sizes and suggested GPUs."),
    "plan": (
        "vlmserve.cli.plan",
        "Size a catalogue model to a GPU: dtype, quantization, KV cache.",
    ),
    "full-config": (
        "vlmserve.models.full_config",
        "Write a full-size model folder without weights (for load_format=dummy benchmarks).",
    ),
    "batch": (
        "vlmserve.cli.batch",
        "Run a Batch API input file offline on the engine, resumable, with a progress bar.",
    ),
    "bench": (
        "vlmserve.bench.cli",
        "Benchmark OpenAI-compatible servers with images: throughput, latency, cost per 1K images.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand's arguments."""
    parser = argparse.ArgumentParser(
        prog="vlmserve", description="Self-hosted vision-language model server."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen subcommand."""
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
