"""Shared fixtures: tiny checkpoints for every family and a real server per family and engine.

Each (family, engine) server starts once per session and is shared by every test that asks for
it; pytest runs the tests of one server together and stops it before starting the next, so at
most one vLLM server runs at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, free_port, start_server, tiny_checkpoint
from tests.redis_server import RedisServer

FAMILIES = ("llava", "llava-next", "internvl", "phi3v", "internvl2")
ENGINES = ("transformers", "vllm")
#: Arguments for a vLLM server on a tiny checkpoint: an 8,192-token context (one InternVL image
#: is up to 3,330 tokens, two Phi-3-V images over 4,096), no torch.compile (start-up is what tests
#: wait for), a small KV cache.
VLLM_TEST_ARGS = ["--max-model-len", "8192", "--enforce-eager", "--cpu-kv-cache-gib", "1"]


def server_args(engine: str) -> list[str]:
    """``vlmserve serve`` arguments that select ``engine`` for a tiny checkpoint."""
    return ["--engine", engine, *(VLLM_TEST_ARGS if engine == "vllm" else [])]


def family_engine_params(families: tuple[str, ...] = FAMILIES) -> list[object]:
    """Every (family, engine) pair of ``families``; the vLLM ones are slow (a minute or more to
    start)."""
    return [
        pytest.param(
            (family, engine),
            id=f"{family}-{engine}",
            # vLLM's start-up counts against the first test's timeout; minutes on a busy machine.
            marks=[pytest.mark.slow, pytest.mark.timeout(1800)] if engine == "vllm" else [],
        )
        for engine in ENGINES
        for family in families
    ]


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tiny checkpoints live: a persistent cache if given, else a session folder."""
    cached = os.environ.get("VLMSERVE_TEST_CACHE")
    return Path(cached) if cached else tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_root: Path):  # type: ignore[no-untyped-def]
    """``tiny_model(family)`` -> the path of that family's tiny checkpoint."""
    return lambda family: tiny_checkpoint(family, tiny_root)


@pytest.fixture(scope="session", params=family_engine_params())
def family_server(
    request: pytest.FixtureRequest, tiny_model, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ServerProcess]]:
    """A real server per tiny family and engine: (family name, server).

    Indirect parametrisation may pass a family name alone: the transformers engine then.
    """
    family, engine = request.param if isinstance(request.param, tuple) else (request.param, "")
    engine = engine or "transformers"
    logs = tmp_path_factory.mktemp("logs")
    server = start_server(
        ["--model", str(tiny_model(family)), *server_args(engine)],
        logs / f"{family}-{engine}.log",
        timeout=900 if engine == "vllm" else 180,
    )
    assert server.engine == engine
    yield family, server
    server.stop(timeout=120)


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
