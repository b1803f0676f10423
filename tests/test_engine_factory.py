"""Engine choice: vLLM wherever it can run the model (a GPU with vLLM's CUDA build, or vLLM's CPU
build), transformers otherwise, and a clear one-line refusal at start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlmserve.config import Settings
from vlmserve.engine import factory
from vlmserve.planner.gpus import DetectedGPU, detect_gpus

REPO = Path(__file__).resolve().parent.parent
H100 = DetectedGPU("NVIDIA H100 80GB HBM3", 80 * 2**30, (9, 0))


def with_machine(
    monkeypatch: pytest.MonkeyPatch, gpus: list[DetectedGPU], vllm: bool, cpu_build: bool = False
) -> None:
    """Pretend the machine has ``gpus`` and, or not, vLLM's CUDA or CPU build (a unit test of the
    decision only)."""
    monkeypatch.setattr(factory, "detect_gpus", lambda: gpus)
    monkeypatch.setattr(factory, "vllm_installed", lambda: vllm or cpu_build)
    monkeypatch.setattr(factory, "vllm_cpu_build", lambda: cpu_build)


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


def test_cpu_build_runs_vllm_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """With vLLM's CPU build, auto picks vLLM for a model; the demo stays on transformers."""
    with_machine(monkeypatch, [], False, cpu_build=True)
    assert factory.choose_engine(Settings(engine="vllm"))[0] == "vllm"
    assert factory.choose_engine(Settings(engine="auto", model="/m"))[0] == "vllm"
    name, reason = factory.choose_engine(Settings(engine="auto"))
    assert name == "transformers" and "demo" in reason


def test_this_machine_has_the_cpu_build_unless_it_has_a_gpu() -> None:
    """scripts/setup.sh installs vLLM's CPU build wherever no NVIDIA GPU is found."""
    assert factory.vllm_cpu_build() == (not detect_gpus())


def narrow_heads_model(folder: Path) -> Path:
    """A LLaVA config whose language model has 16-wide heads (CPU attention has no kernel)."""
    from vlmserve.engine.vllm_cpu import cpu_supported_head_sizes

    assert 16 not in cpu_supported_head_sizes()
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "text_config": {"hidden_size": 64, "num_attention_heads": 4},
    }
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_cpu_build_refuses_a_head_size_it_has_no_kernel_for(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    if not factory.vllm_cpu_build():
        pytest.skip("checks vLLM's CPU build")
    path = narrow_heads_model(tmp_path / "narrow")
    with pytest.raises(factory.EngineUnavailableError, match="head size is 16"):
        factory.choose_engine(Settings(engine="vllm", model=str(path)), path)
    name, reason = factory.choose_engine(Settings(engine="auto", model=str(path)), path)
    assert name == "transformers" and "head size is 16" in reason


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vlmserve.cli.main", "serve", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(bool(detect_gpus()), reason="checks a machine without a GPU")
def test_serve_with_vllm_and_narrow_heads_exits_2_with_one_error_line(tmp_path: Path) -> None:
    """An engine that cannot run the model says so at start-up, never on the first request."""
    path = narrow_heads_model(tmp_path / "narrow")
    result = serve("--engine", "vllm", "--model", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vlmserve:")]
    assert len(errors) == 1, result.stderr
    assert "head size is 16" in errors[0] and "--engine transformers" in errors[0]


def test_serve_plans_catalogue_models_for_vllm() -> None:
    """The plan's engine arguments reach vLLM's arguments; settings still win; video stays off."""
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
    # One grammar engine on both engines, writing compact JSON.
    assert args["structured_outputs_config"] == {
        "backend": "xgrammar",
        "disable_any_whitespace": True,
    }
    assert plan_engine_args(settings, None) is None


def test_serve_refuses_a_model_that_does_not_fit() -> None:
    from vlmserve.cli.serve import plan_engine_args
    from vlmserve.models.catalog import get_model

    with pytest.raises(factory.EngineUnavailableError, match="H100"):
        plan_engine_args(Settings(gpu="RTX3070"), get_model("internvl2-76b"))


def quantized_config(folder: Path, quant_method: str | None = None) -> Path:
    """A LLaVA config with 32-wide heads, quantized with ``quant_method`` when given."""
    config: dict[str, object] = {
        "architectures": ["LlavaForConditionalGeneration"],
        "text_config": {"hidden_size": 64, "num_attention_heads": 2},
    }
    if quant_method:
        config["quantization_config"] = {"quant_method": quant_method, "bits": 4}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("engine", ["vllm", "auto"])
def test_cpu_build_refuses_fp8_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, engine: str
) -> None:
    """fp8 weights, asked for or in the checkpoint, are GPU-only; auto does not fall back to
    transformers (it would serve the weights unquantized)."""
    with_machine(monkeypatch, [], False, cpu_build=True)
    plain = quantized_config(tmp_path / "plain")
    settings = Settings(engine=engine, model=str(plain), quantization="fp8")
    with pytest.raises(factory.EngineUnavailableError, match="quantization fp8 is GPU-only"):
        factory.choose_engine(settings, plain)
    fp8 = quantized_config(tmp_path / "fp8", "fp8")
    with pytest.raises(factory.EngineUnavailableError, match="dynamic_scaled_fp8_quant"):
        factory.choose_engine(Settings(engine=engine, model=str(fp8)), fp8)


def test_cpu_build_refuses_bitsandbytes_without_its_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from vlmserve.engine import vllm_cpu

    path = quantized_config(tmp_path / "m")
    monkeypatch.setattr(vllm_cpu, "bitsandbytes_installed", lambda: False)
    refusal = vllm_cpu.cpu_quantization_refusal(path, "bitsandbytes")
    assert refusal is not None and "pip install 'bitsandbytes" in refusal
    monkeypatch.setattr(vllm_cpu, "bitsandbytes_installed", lambda: True)
    assert vllm_cpu.cpu_quantization_refusal(path, "bitsandbytes") is None


def test_cpu_build_takes_awq_and_gptq(tmp_path: Path) -> None:
    """AWQ and GPTQ run on vLLM's CPU build (tests/test_vllm_cpu_quantization.py serves them)."""
    from vlmserve.engine.vllm_cpu import cpu_quantization_refusal, quantization_of

    for method in ("awq", "gptq"):
        path = quantized_config(tmp_path / method, method)
        assert quantization_of(path, None) == method
        assert cpu_quantization_refusal(path, None) is None
        assert cpu_quantization_refusal(path, method) is None
    assert quantization_of(tmp_path / "awq", "fp8") == "fp8"


@pytest.mark.skipif(not factory.vllm_cpu_build(), reason="checks vLLM's CPU build")
@pytest.mark.parametrize(
    ("quantization", "reason"),
    [("fp8", "GPU-only"), ("bitsandbytes", "needs the bitsandbytes package")],
)
def test_serve_refuses_a_quantization_the_cpu_build_cannot_run(
    tmp_path: Path, quantization: str, reason: str
) -> None:
    """One line and exit 2 at start-up, never a worker's traceback a minute later."""
    from vlmserve.engine.vllm_cpu import bitsandbytes_installed

    if quantization == "bitsandbytes" and bitsandbytes_installed():
        pytest.skip("bitsandbytes is installed here")
    path = quantized_config(tmp_path / "m")
    result = serve("--engine", "vllm", "--model", str(path), "--quantization", quantization)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vlmserve:")]
    assert len(errors) == 1, result.stderr
    assert reason in errors[0]
