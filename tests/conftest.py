"""Shared fixtures: tiny checkpoints for every family and a real server per family."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, free_port, start_server, tiny_checkpoint
from tests.redis_server import RedisServer

FAMILIES = ("llava", "llava-next", "internvl", "phi3v", "internvl2")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tiny checkpoints live: a persistent cache if given, else a session folder."""
    cached = os.environ.get("VLMSERVE_TEST_CACHE")
    return Path(cached) if cached else tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_root: Path):  # type: ignore[no-untyped-def]
    """``tiny_model(family)`` -> the path of that family's tiny checkpoint."""
    return lambda family: tiny_checkpoint(family, tiny_root)


@pytest.fixture(scope="session", params=FAMILIES)
def family_server(
    request: pytest.FixtureRequest, tiny_model, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess]]:
    """A real server per tiny family: (family name, server)."""
    family = request.param
    logs = tmp_path_factory.mktemp("logs")
    server = start_server(["--model", str(tiny_model(family))], logs / f"{family}.log")
    yield family, server
    server.stop()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``vlmserve serve`` with no model: the built-in demo, built into a fresh cache."""
    cache = tmp_path_factory.mktemp("cache")
    server = start_server([], cache / "demo.log", env={"VLMSERVE_CACHE_DIR": str(cache)})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_llava_dir(tiny_model) -> Path:  # type: ignore[no-untyped-def]
    """The tiny LLaVA-1.5 checkpoint (CLIP-336 geometry)."""
    return tiny_model("llava")


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real, empty ``redis-server`` on a free loopback port, stopped after the test."""
    server = RedisServer(free_port(), tmp_path / "redis.log")
    server.start()
    yield server
    server.stop()
