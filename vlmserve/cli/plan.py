"""``vlmserve plan --model MODEL [--gpu SPEC] [--max-images N] [--json]``: size a model to GPUs.

``MODEL`` is a catalogue name, a checkpoint folder, or a Hugging Face repo id. A repo id the
catalogue knows plans as that entry; any other folder or repo is read from its ``config.json``
(:mod:`vlmserve.models.checkpoint`), a repo from the Hugging Face cache only: planning never
downloads anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from vlmserve.models.catalog import CATALOG, CatalogModel, find_by_repo

if TYPE_CHECKING:
    from vlmserve.planner.plan import Plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments: the model, the GPUs and the workload knobs that are not settings already."""
    parser.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help=f"A catalogue model ({', '.join(CATALOG)}), a checkpoint folder, or a Hugging Face "
        "repo id already in the Hugging Face cache.",
    )
    parser.add_argument(
        "--gpu",
        default=None,
        help="GPUs to plan for, like A10G, 2xA10G or A100-40GB (default: "
        "VLMSERVE_GPU, else the GPUs detected here).",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=None,
        metavar="N",
        help="Most images per request (default: VLMSERVE_MAX_IMAGES_PER_REQUEST).",
    )
    parser.add_argument("--json", action="store_true", help="Print the plan as one JSON object.")


def run(args: argparse.Namespace) -> int:
    """Print the plan; exit 1 when it does not fit, 2 when there is no GPU to plan for."""
    from vlmserve.cli.model_source import ModelNotFoundError
    from vlmserve.config import Settings
    from vlmserve.planner.gpus import gpus_to_plan_for
    from vlmserve.planner.plan import Overrides, Workload
    from vlmserve.planner.planner import plan_model

    settings = Settings()
    try:
        model = model_to_plan(args.model)
    except (ModelNotFoundError, ValueError) as exc:
        print(f"vlmserve plan: {exc}", file=sys.stderr)
        return 2
    spec = args.gpu or settings.gpu
    try:
        gpus = gpus_to_plan_for(spec)
    except ValueError as exc:
        print(f"vlmserve plan: {exc}", file=sys.stderr)
        return 2
    if not gpus:
        print(
            "vlmserve plan: no GPU detected here; name one with --gpu (for example A10G, "
            "2xA10G or H100)",
            file=sys.stderr,
        )
        return 2
    workload = Workload.from_settings(settings, args.max_images)
    plan = plan_model(model, gpus, workload, Overrides.from_settings(settings))
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(format_plan(plan))
    return 0 if plan.fits else 1


def model_to_plan(name: str) -> CatalogModel:
    """The catalogue entry for a name or a known repo id, else the checkpoint's own numbers.

    Raises :class:`~vlmserve.cli.model_source.ModelNotFoundError` for a folder that does not
    exist or a repo that is not in the cache, ``ValueError`` for a checkpoint vlmserve cannot
    size (an unknown architecture, a config without the numbers).
    """
    from vlmserve.cli.model_source import resolve_model
    from vlmserve.models.checkpoint import checkpoint_model

    entry = CATALOG.get(name) or find_by_repo(name)
    if entry is not None:
        return entry
    resolved = resolve_model(name, offline=True)
    if resolved.repo_id is None:
        return checkpoint_model(resolved.path, resolved.path.name, str(resolved.path))
    return checkpoint_model(resolved.path, resolved.repo_id, resolved.repo_id)


def format_plan(plan: Plan) -> str:
    """The plan as a short human-readable report."""
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines = [f"{plan.model} on {plan.gpu}: {verdict}", ""]
    lines += [f"  - {line}" for line in plan.explanation]
    if plan.fits:
        lines += ["", "vLLM engine arguments:", f"  model: {plan.repo}"]
        lines += [f"  {key}: {value}" for key, value in plan.engine_args().items()]
    return "\n".join(lines)
