"""Turn ``vlmserve bench`` arguments into targets, a workload and a load plan."""

from __future__ import annotations

import argparse
import logging

import httpx

from vlmserve.bench.client import make_headers
from vlmserve.bench.photos import PRESETS
from vlmserve.bench.runner import Level, LoadPlan, Target
from vlmserve.bench.workload import (
    Workload,
    load_image_dir,
    parse_sizes,
    photo_images,
    synthetic_pool,
)

logger = logging.getLogger(__name__)

DEFAULT_NUM_REQUESTS = 100


def first_model(base_url: str, api_key: str | None, timeout: float = 30.0) -> str:
    """The first model id the server lists at ``GET /models``."""
    url = base_url.rstrip("/") + "/models"
    response = httpx.get(url, headers=make_headers(api_key), timeout=timeout)
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise ValueError(f"{url} lists no models; pass the model id explicitly")
    return str(models[0]["id"])


def build_targets(args: argparse.Namespace) -> list[Target]:
    """Server A, and server B when ``--compare`` is given."""
    try:
        model = args.model or first_model(args.base_url, args.api_key)
        targets = [Target("A", args.base_url, model, args.api_key, args.extra_body)]
        if args.compare:
            compare_model = args.compare_model or first_model(args.compare, args.compare_api_key)
            targets.append(
                Target(
                    "B", args.compare, compare_model, args.compare_api_key, args.compare_extra_body
                )
            )
    except httpx.HTTPError as exc:
        raise ValueError(f"could not list models: {exc}") from exc
    return targets


def build_workload(args: argparse.Namespace) -> Workload:
    """Encode the images (from ``--image-dir`` or synthetic) before any timing starts."""
    if args.images_per_request < 0 or args.output_tokens < 1:
        raise ValueError("--images-per-request must be >= 0 and --output-tokens >= 1")
    if args.workload == "multi-turn" and args.turns < 2:
        raise ValueError("--turns must be at least 2 for the multi-turn workload")
    if args.image_dir is not None:
        images = load_image_dir(args.image_dir)
        source = f"folder {args.image_dir}"
    elif args.image_preset is not None:
        width, height = PRESETS[args.image_preset]
        images = photo_images(width, height, args.distinct_images, args.seed)
        source = f"photo-like jpeg, preset {args.image_preset}"
    else:
        images = synthetic_pool(
            parse_sizes(args.image_size), args.image_format, args.distinct_images, args.seed
        )
        source = f"synthetic {args.image_format}"
    return Workload(
        images=images,
        images_per_request=args.images_per_request,
        prompt=args.prompt,
        output_tokens=args.output_tokens,
        detail=args.detail,
        source=source,
        turns=args.turns if args.workload == "multi-turn" else 1,
    )


def build_plan(args: argparse.Namespace) -> LoadPlan:
    """Levels and per-level amount: ``--num-requests``, ``--duration``, or 100 requests."""
    if args.request_rate:
        levels = [Level("rate", rate) for rate in args.request_rate]
    else:
        levels = [Level("concurrency", float(c)) for c in args.concurrency]
    num_requests = args.num_requests
    if num_requests is None and args.duration is None:
        num_requests = DEFAULT_NUM_REQUESTS
    if num_requests is not None and num_requests < 1:
        raise ValueError("--num-requests must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise ValueError("--duration must be positive")
    if args.rounds < 1 or (num_requests is not None and args.rounds > num_requests):
        raise ValueError("--rounds must be between 1 and the requests per level")
    return LoadPlan(
        levels=levels,
        num_requests=num_requests,
        duration=args.duration,
        warmup=max(args.warmup, 0),
        timeout=args.timeout,
        seed=args.seed,
        rounds=args.rounds,
    )
