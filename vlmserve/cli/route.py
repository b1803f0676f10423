"""``vlmserve route --config router.yaml``: the multi-model router (see vlmserve/router/).

It takes the server's settings too (host, port, log level, Redis, the response cache, image
limits for cache keys), from the same flags and ``VLMSERVE_*`` variables as ``vlmserve serve``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from vlmserve.cli.serve import add_arguments as add_settings_arguments
from vlmserve.cli.serve import settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` plus every settings flag."""
    parser.add_argument(
        "--config", type=Path, required=True, help="The router's YAML file: tiers, backends, auto."
    )
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Load the config and serve the router until SIGINT/SIGTERM."""
    import uvicorn

    from vlmserve.logs import configure_logging
    from vlmserve.router.config import RouterConfig

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.json_logs)
    try:
        config = RouterConfig.load(args.config)
        from vlmserve.router.app import create_router_app

        app = create_router_app(settings, config)
    except (OSError, ValidationError, ValueError) as exc:
        print(f"vlmserve route: {args.config}: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
    return 0
