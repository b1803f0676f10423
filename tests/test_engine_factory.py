"""Engine choice: vLLM on a GPU with vLLM installed, transformers otherwise, and a clear refusal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vlmserve.config import Settings
from vlmserve.engine import factory
from vlmserve.planner.gpus import DetectedGPU, detect_gpus

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
        [
            sys.executable,
            "-m",
            "vlmserve.cli.main",
            "serve",
            "--engine",
            "vllm",
            "--model",
            str(tmp_path),
        ],
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


def test_serve_plans_catalogue_models_for_vllm() -> None:
    """The plan's engine arguments reach vLLM's arguments; settings still win; video stays off."""
    from tests import vllm_cpu

    vllm_cpu.install()  # before vLLM is first imported, or its platform is fixed as "none"
    from vlmserve.cli.serve import plan_engine_args
    from vlmserve.engine.vllm_engine import engine_args_from_settings
    from vlmserve.models.catalog import get_model

    settings = Settings(gpu="A10G", max_num_seqs=3)
    plan_args = plan_engine_args(settings, get_model("llava-1.5-7b"))
    assert plan_args is not None and plan_args["max_model_len"] >= 576
    args = engine_args_from_settings(settings, "/models/llava", plan_args)
    assert args["max_model_len"] == plan_args["max_model_len"]
    assert args["max_num_seqs"] == 3
    assert args["limit_mm_per_prompt"] == {"video": 0, **plan_args["limit_mm_per_prompt"]}
    assert args["trust_remote_code"] is False
    # Batch lines rely on it: a priority other than 0 is refused under vLLM's default policy.
    assert args["scheduling_policy"] == "priority"
    assert plan_engine_args(settings, None) is None


def test_serve_refuses_a_model_that_does_not_fit() -> None:
    from vlmserve.cli.serve import plan_engine_args
    from vlmserve.models.catalog import get_model

    with pytest.raises(factory.EngineUnavailableError, match="H100"):
        plan_engine_args(Settings(gpu="RTX3070"), get_model("internvl2-76b"))
