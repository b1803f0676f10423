"""Engine choice: vLLM on a GPU with vLLM installed, transformers otherwise, and a clear refusal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.config import Settings
from server.engine import factory
from server.gpus import DetectedGPU, detect_gpus

REPO = Path(__file__).resolve().parent.parent
H100 = DetectedGPU("NVIDIA H100 80GB HBM3", 80 * 2**30, (9, 0))


def with_machine(monkeypatch: pytest.MonkeyPatch, gpus: list[DetectedGPU], vllm: bool) -> None:
    """Pretend the machine has ``gpus`` and, or not, vLLM (a unit test of the decision only)."""
    monkeypatch.setattr(factory, "detect_gpus", lambda: gpus)
    monkeypatch.setattr(factory, "vllm_installed", lambda: vllm)


@pytest.mark.parametrize(
    ("gpus", "vllm", "expected"),
    [([H100], True, "vllm"), ([H100], False, "transformers"), ([], True, "transformers")],
)
def test_auto(
    monkeypatch: pytest.MonkeyPatch, gpus: list[DetectedGPU], vllm: bool, expected: str
) -> None:
    with_machine(monkeypatch, gpus, vllm)
    name, reason = factory.choose_engine(Settings(engine="auto"))
    assert name == expected
    assert reason.startswith("auto: ")
    assert ("H100" in reason) == bool(gpus)


def test_vllm_asked_for_without_gpu_or_package(monkeypatch: pytest.MonkeyPatch) -> None:
    with_machine(monkeypatch, [], True)
    with pytest.raises(factory.EngineUnavailableError, match="needs an NVIDIA GPU"):
        factory.choose_engine(Settings(engine="vllm"))
    with_machine(monkeypatch, [H100], False)
    with pytest.raises(factory.EngineUnavailableError, match="vlmserve\\[gpu\\]"):
        factory.choose_engine(Settings(engine="vllm"))
    with_machine(monkeypatch, [H100], True)
    assert factory.choose_engine(Settings(engine="vllm"))[0] == "vllm"


def test_transformers_asked_for_skips_gpu_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_detection() -> list[DetectedGPU]:
        raise AssertionError("GPU detection should not run")

    monkeypatch.setattr(factory, "detect_gpus", no_detection)
    assert factory.choose_engine(Settings(engine="transformers"))[0] == "transformers"


@pytest.mark.skipif(bool(detect_gpus()), reason="checks the refusal on a machine without a GPU")
def test_serve_with_vllm_and_no_gpu_exits_2_with_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--engine", "vllm", "--model", str(tmp_path)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "NVIDIA GPU" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("vlmserve: engine=vllm needs an NVIDIA GPU")
