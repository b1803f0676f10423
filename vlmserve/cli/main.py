"""The ``vlmserve`` console script: one entry point, one subcommand per job.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``. Only the module of the subcommand named on the command line is imported
(``vlmserve --help`` imports none), and the light subcommands (``models``, ``plan``) import
neither torch nor transformers nor vLLM: a test keeps it so.
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
        "Size a model (catalogue name, folder or cached repo) to a GPU: dtype, quantization, "
        "KV cache.",
    ),
    "full-config": (
        "vlmserve.models.full_config",
        "Write a full-size model folder without weights (for load_format=dummy benchmarks).",
    ),
    "route": (
        "vlmserve.cli.route",
        "Route requests across several model backends (LiteLLM's Router), with auto tiers.",
    ),
    "bench": (
        "vlmserve.bench.cli",
        "Benchmark OpenAI-compatible servers with images: throughput, latency, cost per 1K images.",
    ),
}


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names: its first argument that is not an option."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in COMMANDS else None


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the subcommand ``argv`` names gets its arguments (and import)."""
    parser = argparse.ArgumentParser(
        prog="vlmserve", description="Self-hosted vision-language model server."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = chosen_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            importlib.import_module(module_name).add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen subcommand."""
    arguments = sys.argv[1:] if argv is None else argv
    args = build_parser(arguments).parse_args(arguments)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
