"""``vlmserve serve``: every flag is a :class:`~server.config.Settings` field.

Flags are derived from the settings fields (name, type, description), so ``--help``, the
environment variables and the settings class cannot drift apart. A flag overrides its
``VLMSERVE_*`` variable, which overrides the default.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any

from server.config import Settings

logger = logging.getLogger(__name__)


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """The argparse type and choices for a settings annotation (optional types unwrapped)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0]
        args = list(typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    return annotation, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per settings field, with the field's description as help."""
    for name, info in Settings.model_fields.items():
        kind, choices = _flag_type(info.annotation)
        default = info.default if info.default is not None else "unset"
        help_text = f"{info.description} [env VLMSERVE_{name.upper()}; default: {default}]"
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        parser.add_argument(
            flag,
            dest=name,
            type=kind if kind in (int, float, Path) else str,
            choices=choices,
            default=None,
            metavar=None if choices else name.upper(),
            help=help_text,
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**given)


def run(args: argparse.Namespace) -> int:
    """Resolve the model, build the engine and serve until SIGINT/SIGTERM."""
    import uvicorn

    from server.app import create_app
    from server.demo import DEMO_NAME, demo_checkpoint
    from server.engine.factory import EngineUnavailableError, build_engine
    from server.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.json_logs)
    if settings.model is None:
        model_path = demo_checkpoint(settings.cache_dir)
        model_id = settings.served_model_name or DEMO_NAME
        logger.warning(
            "no --model given: serving the tiny built-in demo model %r from %s. It has random "
            "weights, so its answers are random text; pass --model to serve a real model.",
            model_id,
            model_path,
        )
    else:
        model_path = Path(settings.model).expanduser()
        if not (model_path / "config.json").exists():
            print(f"vlmserve: {model_path} is not a model folder (no config.json)", file=sys.stderr)
            return 2
        model_id = settings.served_model_name or model_path.name
    try:
        engine = build_engine(settings, model_path)
    except (EngineUnavailableError, ValueError) as exc:
        print(f"vlmserve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, engine, model_id)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
    )
    failures: list[BaseException] = []

    def fatal(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app.state.vlm.on_fatal = fatal
    server.run()
    return 1 if failures else 0
