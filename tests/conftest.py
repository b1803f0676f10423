"""Shared fixtures: tiny checkpoints are built once per test session (about 10 s each)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight LLaVA-1.5 checkpoint with the real CLIP-336 image geometry."""
    from models.families import get_family

    return get_family("llava").build_tiny(tmp_path_factory.mktemp("tiny-llava"))
