"""``vlmserve serve``: every flag is a :class:`~vlmserve.config.Settings` field.

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
from typing import TYPE_CHECKING, Any

from vlmserve.config import Settings
from vlmserve.engine.factory import EngineUnavailableError

if TYPE_CHECKING:
    from vlmserve.models.catalog import CatalogModel

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


def served_name(model: str, repo_id: str | None) -> str:
    """The id clients use: a catalogue name or repo id as given, else the folder's name."""
    return model if repo_id is not None else Path(model).expanduser().resolve().name


def resolve(settings: Settings) -> tuple[Path, str, CatalogModel | None]:
    """The model folder, the id clients use, and its catalogue entry (the demo when unset)."""
    from vlmserve.cli.demo import DEMO_NAME, demo_checkpoint
    from vlmserve.cli.model_source import resolve_model
    from vlmserve.models.catalog import CATALOG

    if settings.model is None:
        path = demo_checkpoint(settings.cache_dir)
        model_id = settings.served_model_name or DEMO_NAME
        logger.warning(
            "no --model given: serving the tiny built-in demo model %r from %s. It has random "
            "weights, so its answers are random text; pass --model to serve a real model.",
            model_id,
            path,
        )
        return path, model_id, None
    resolved = resolve_model(settings.model, settings)
    if not (resolved.path / "config.json").exists():
        raise ValueError(f"{resolved.path} is not a model folder (no config.json)")
    model_id = settings.served_model_name or served_name(settings.model, resolved.repo_id)
    logger.info("model %s from %s", model_id, resolved.path)
    # A folder served under a catalogue name (a full-size config for dummy weights) is planned
    # as that catalogue model.
    return resolved.path, model_id, resolved.catalog or CATALOG.get(model_id)


def plan_engine_args(settings: Settings, model: CatalogModel | None) -> dict[str, Any] | None:
    """The planner's vLLM arguments for a catalogue model on the GPUs to serve on.

    A folder the catalogue does not know gets vLLM's own defaults plus the settings' overrides.
    """
    from vlmserve.cli.plan import format_plan
    from vlmserve.planner.gpus import gpus_to_plan_for
    from vlmserve.planner.plan import Overrides, Workload
    from vlmserve.planner.planner import plan_model

    if model is None:
        logger.info("not a catalogue model: vLLM sizes it with its defaults and your overrides")
        return None
    plan = plan_model(
        model,
        gpus_to_plan_for(settings.gpu),
        Workload.from_settings(settings),
        Overrides.from_settings(settings),
    )
    logger.info("plan:\n%s", format_plan(plan))
    if not plan.fits:
        raise EngineUnavailableError(" ".join(plan.explanation))
    return plan.engine_args()


def run(args: argparse.Namespace) -> int:
    """Resolve the model, plan and build the engine, and serve until SIGINT/SIGTERM."""
    import uvicorn

    from vlmserve.api.app import create_app
    from vlmserve.api.shutdown import DrainingServer
    from vlmserve.cli.model_source import ModelNotFoundError
    from vlmserve.engine.factory import build_engine, choose_engine
    from vlmserve.logs import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_level, settings.json_logs)
    try:
        model_path, model_id, catalog = resolve(settings)
        name, _ = choose_engine(settings)
        plan_args = plan_engine_args(settings, catalog) if name == "vllm" else None
        engine = build_engine(name, settings, model_path, plan_args)
    except (ModelNotFoundError, EngineUnavailableError, ValueError) as exc:
        print(f"vlmserve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, engine, model_id)
    state = app.state.vlm
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            # The drain has already waited for requests in flight; this only bounds the close.
            timeout_graceful_shutdown=2,
        ),
        state.admission,
        settings.shutdown_grace_seconds,
    )
    failures: list[BaseException] = []

    def fatal(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    state.on_fatal = fatal
    server.run()
    return 1 if failures else 0
