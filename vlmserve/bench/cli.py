"""``vlmserve bench``: load-test an OpenAI-compatible chat server with images, or two at once."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmserve.bench.runner import LoadPlan, Target
    from vlmserve.bench.workload import Workload

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Describe this image in detail."


def _positive_list(kind: type[int | float]) -> Any:
    def parse(text: str) -> list[Any]:
        values = [kind(item) for item in text.split(",") if item.strip()]
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(
                f"expected positive numbers separated by commas: {text}"
            )
        return values

    return parse


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("servers")
    group.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="OpenAI base URL.")
    group.add_argument("--model", help="Model id to send; default: the first from GET /models.")
    group.add_argument("--api-key", help="Bearer token for --base-url.")
    group.add_argument("--compare", metavar="URL", help="Second server's base URL (run as B).")
    group.add_argument("--compare-model", help="Model id on --compare; default: its first model.")
    group.add_argument("--compare-api-key", help="Bearer token for --compare.")
    group.add_argument(
        "--extra-body",
        type=_json_object,
        default={},
        help="JSON merged into every request to A, e.g. '{\"temperature\": 0}'.",
    )
    group.add_argument(
        "--compare-extra-body",
        type=_json_object,
        default={},
        help="JSON merged into requests to B.",
    )


def _add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    from vlmserve.bench.photos import PRESETS

    group = parser.add_argument_group("workload")
    group.add_argument(
        "--image-size", default="336x336", help="Synthetic sizes, e.g. 336x336,1024x768."
    )
    group.add_argument("--image-format", choices=["png", "jpeg"], default="jpeg")
    group.add_argument("--image-dir", type=Path, help="Send the images in this folder instead.")
    group.add_argument(
        "--image-preset",
        choices=sorted(PRESETS),
        help="Photo-like JPEGs at a camera's size (phone: 4032x3024); replaces --image-size.",
    )
    group.add_argument(
        "--workload",
        choices=["single", "multi-turn"],
        default="single",
        help="multi-turn: each image opens a conversation that is resent, images included, "
        "with each of --turns turns.",
    )
    group.add_argument("--turns", type=int, default=4, help="Turns per multi-turn conversation.")
    group.add_argument("--images-per-request", type=int, default=1)
    group.add_argument(
        "--distinct-images", type=int, default=64, help="Synthetic images generated (cycled)."
    )
    group.add_argument("--prompt", default=DEFAULT_PROMPT)
    group.add_argument(
        "--output-tokens",
        type=int,
        default=64,
        help="max_tokens, made exact with min_tokens and ignore_eos where the server accepts them.",
    )
    group.add_argument("--detail", choices=["low", "high", "auto"], help="image_url detail.")


def _add_load_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("load")
    group.add_argument(
        "--concurrency",
        type=_positive_list(int),
        default=[1, 4, 16, 64],
        help="Closed-loop levels: requests kept in flight (comma-separated).",
    )
    group.add_argument(
        "--request-rate",
        type=_positive_list(float),
        help="Open-loop Poisson arrival rates in req/s (comma-separated); replaces --concurrency.",
    )
    group.add_argument(
        "--num-requests", type=int, help="Measured requests per level (default 100)."
    )
    group.add_argument("--duration", type=float, help="Seconds of new requests per level.")
    group.add_argument("--warmup", type=int, default=2, help="Uncounted requests per server first.")
    group.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="With --compare: batches per level, alternating A,B and B,A (more evens out drift).",
    )
    group.add_argument("--timeout", type=float, default=600.0, help="Per-request timeout, seconds.")
    group.add_argument("--seed", type=int, default=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``vlmserve bench``'s flags."""
    _add_target_arguments(parser)
    _add_workload_arguments(parser)
    _add_load_arguments(parser)
    group = parser.add_argument_group("report")
    group.add_argument("--gpu-price", type=float, metavar="USD_PER_HOUR", help="For cost columns.")
    group.add_argument("--out", type=Path, help="Folder for bench.json, summary.md and PNG plots.")
    group.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its summary; 1 when no measured request completed."""
    import asyncio

    from vlmserve.bench.options import build_plan, build_targets, build_workload
    from vlmserve.bench.runner import WarmUpError, run_benchmark

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        targets = build_targets(args)
        workload = build_workload(args)
        plan = build_plan(args)
    except (ValueError, OSError) as exc:
        print(f"vlmserve bench: {exc}", file=sys.stderr)
        return 2
    metadata = _metadata(args, targets, workload, plan)
    try:
        outcome = asyncio.run(run_benchmark(targets, workload, plan, not args.no_progress))
    except WarmUpError as exc:
        print(f"vlmserve bench: {exc}", file=sys.stderr)
        return 1
    from vlmserve.bench.output import finish

    return finish(outcome, targets, workload, args, metadata)


def _metadata(
    args: argparse.Namespace, targets: list[Target], workload: Workload, plan: LoadPlan
) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["vlmserve", *sys.argv[1:]]),
        "targets": [
            {
                "name": t.name,
                "base_url": t.base_url,
                "model": t.model,
                "api_key_set": bool(t.api_key),
            }
            for t in targets
        ],
        "workload": workload.describe(),
        "load": {
            "levels": [{"kind": lv.kind, "value": lv.value} for lv in plan.levels],
            "num_requests": plan.num_requests,
            "duration": plan.duration,
            "warmup": plan.warmup,
            "timeout": plan.timeout,
            "seed": plan.seed,
            "interleaving": (
                f"{plan.rounds} batches per level, A,B then B,A in turn"
                if len(targets) == 2
                else None
            ),
        },
        "gpu_price_per_hour": args.gpu_price,
        "client": {
            "host": platform.node(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
