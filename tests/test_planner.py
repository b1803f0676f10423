"""The planner against the source guide's hardware table, the GPU list and vLLM itself."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlmserve.cli import plan as plan_cmd
from vlmserve.config import Settings
from vlmserve.models.catalog import CATALOG, get_model
from vlmserve.planner import gpus as gpus_module
from vlmserve.planner.gpus import GPU_CATALOG, DetectedGPU, gpus_to_plan_for, parse_gpu_spec
from vlmserve.planner.plan import Overrides, Plan, Workload
from vlmserve.planner.planner import plan_model

ROWS = [(m.name, m.hardware) for m in CATALOG.values() if m.hardware is not None]


def plan_for(name: str, spec: str, **workload: int) -> Plan:
    return plan_model(get_model(name), parse_gpu_spec(spec), Workload(**workload))


@pytest.mark.parametrize(("name", "row"), ROWS, ids=[r[0] for r in ROWS])
def test_fp16_footprint_is_within_ten_percent_of_the_source_table(name: str, row) -> None:  # type: ignore[no-untyped-def]
    plan = plan_for(name, "H100")
    assert plan.vram_fp16_gib == pytest.approx(row.vram_fp16_gb, rel=0.10)


# Phi-3-Vision on 8 GB cannot hold four 2,653-token images (num_crops 16): after 4-bit weights
# (2.9 GiB) and reserves (1.6 GiB) of the 7.2 GiB budget, 2.7 GiB of cache at 384 KiB per token
# (Phi-3-mini has 32 KV heads, no GQA) is 7,480 tokens: two images. The guide's claim needs
# fewer crops per image.
_TIGHT = {("phi-3-vision", "RTX3070")}
TABLE_CASES = [
    pytest.param(
        name,
        spec,
        marks=pytest.mark.xfail(
            (name, spec) in _TIGHT, reason="holds 2, not 4, maximum-size images", strict=True
        ),
    )
    for name, row in ROWS
    for spec in (row.minimum_gpu, row.recommended_gpu)
]


@pytest.mark.parametrize(("name", "spec"), TABLE_CASES)
def test_source_table_gpus_fit_and_hold_four_images(name: str, spec: str) -> None:
    plan = plan_for(name, spec, max_images=1)
    assert plan.fits, plan.explanation
    assert plan.max_concurrent_images >= 4, plan.explanation
    fp16_fits = plan_model(
        get_model(name),
        parse_gpu_spec(spec),
        Workload(max_images=1),
        Overrides(quantization="none"),
    )
    assert (plan.quantization == "none") == fp16_fits.meets_workload


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-1.6-mistral-7b", "internvl2-8b"])
def test_h100_serves_7b_and_8b_unquantized_in_bf16(name: str) -> None:
    plan = plan_for(name, "H100")
    assert (plan.fits, plan.quantization, plan.dtype) == (True, "none", "bfloat16")
    assert plan.engine_args()["dtype"] == "bfloat16" and "quantization" not in plan.engine_args()


@pytest.mark.parametrize("name", list(CATALOG))
def test_t4_gets_fp16(name: str) -> None:
    plan = plan_for(name, "T4")
    assert plan.dtype == "float16"


def test_76b_on_rtx3070_is_refused_with_a_setup_that_fits() -> None:
    plan = plan_for("internvl2-76b", "RTX3070")
    assert not plan.fits
    text = " ".join(plan.explanation)
    assert "Does not fit on RTX 3070" in text and "Smallest setup that fits:" in text
    suggested = text.split("Smallest setup that fits: ")[1].split(" with ")[0]
    assert plan_for("internvl2-76b", suggested.replace(" ", "")).fits


def test_awq_is_chosen_only_where_published_and_runs_in_float16() -> None:
    plan = plan_for("llava-1.6-34b", "A100-40GB")
    assert plan.quantization == "awq" and plan.repo == "mesolitica/llava-v1.6-34b-hf-awq"
    assert plan.dtype == "float16"
    seven = plan_for("llava-1.5-7b", "RTX3060")  # no published AWQ: quantized on load
    assert seven.quantization == "bitsandbytes" and seven.repo == "llava-hf/llava-1.5-7b-hf"


def test_fp8_only_where_the_gpu_computes_it() -> None:
    assert plan_for("internvl2-8b", "RTX4080", max_images=1).quantization == "fp8"
    for plan in (plan_for(m, g) for m in CATALOG for g in ("A10G", "A100-40GB", "T4")):
        assert plan.quantization != "fp8" and plan.kv_cache_dtype == "auto"


def test_context_limits_images_per_prompt() -> None:
    plan = plan_for("llava-1.6-34b", "H100", max_images=8)  # 4,096-token context
    assert plan.images_per_prompt == 1 and plan.max_model_len <= 4096
    assert "holds only 1 of the 8 images" in " ".join(plan.explanation)
    too_long = plan_for("llava-1.6-34b", "H100", max_images=1, output_tokens=2000)
    assert not too_long.fits and "context cannot hold one" in too_long.explanation[0]


MATRIX = [(m, g.name, n) for m in CATALOG for g in GPU_CATALOG for n in (1, 2)]


@pytest.mark.parametrize(("name", "gpu", "count"), MATRIX)
def test_every_model_on_every_gpu_plans_or_refuses(name: str, gpu: str, count: int) -> None:
    model = get_model(name)
    plan = plan_model(model, parse_gpu_spec(f"{count}x{gpu}"), Workload())
    assert plan.explanation
    if not plan.fits:
        return
    assert plan.kv_cache_tokens >= plan.max_model_len
    assert plan.max_model_len <= model.text.context
    assert 1 <= plan.images_per_prompt <= Workload().max_images
    assert plan.max_model_len >= plan.images_per_prompt * plan.image_tokens
    assert plan.tensor_parallel_size <= count
    assert model.text.heads % plan.tensor_parallel_size == 0
    per_gpu = plan.weights_gib / plan.tensor_parallel_size
    assert per_gpu + plan.activation_reserve_gib + plan.overhead_gib < plan.budget_gib
    assert plan.max_concurrent_images * plan.image_tokens <= plan.kv_cache_tokens


def test_more_gpus_never_make_a_plan_worse() -> None:
    for name in CATALOG:
        for gpu in GPU_CATALOG:
            one = plan_for(name, gpu.name.replace(" ", ""))
            two = plan_for(name, f"2x{gpu.name.replace(' ', '')}")
            assert two.fits >= one.fits


def test_settings_overrides_are_applied_and_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMSERVE_QUANTIZATION", "none")
    monkeypatch.setenv("VLMSERVE_MAX_NUM_SEQS", "3")
    monkeypatch.setenv("VLMSERVE_GPU_MEMORY_UTILIZATION", "0.8")
    overrides = Overrides.from_settings(Settings())
    plan = plan_model(get_model("llava-1.5-7b"), parse_gpu_spec("A10G"), Workload(), overrides)
    assert plan.max_num_seqs == 3 and plan.gpu_memory_utilization == 0.8
    assert plan.budget_gib == pytest.approx(0.8 * 23028 / 1024, abs=0.01)
    assert any("Override max_num_seqs=3" in line for line in plan.explanation)
    forced = plan_model(get_model("llava-1.5-7b"), parse_gpu_spec("RTX3060"), Workload(), overrides)
    assert not forced.fits and forced.quantization == "none"


# -- the command ---------------------------------------------------------------------------------


def _run_plan(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    plan_cmd.add_arguments(parser)
    return plan_cmd.run(parser.parse_args(argv))


def test_plan_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_plan(["--model", "internvl2-8b", "--gpu", "A10G", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    for key in (
        "model",
        "gpu",
        "fits",
        "dtype",
        "quantization",
        "tensor_parallel_size",
        "vram_fp16_gib",
        "weights_gib",
        "kv_cache_gib",
        "kv_cache_tokens",
        "max_concurrent_images",
        "engine_args",
        "explanation",
    ):
        assert key in body
    assert body["engine_args"]["limit_mm_per_prompt"] == {"image": 8}


def test_plan_refusal_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_plan(["--model", "internvl2-76b", "--gpu", "RTX3070"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_plan_without_gpu_uses_detected_ones(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VLMSERVE_GPU", raising=False)
    monkeypatch.setattr(gpus_module, "detect_gpus", list)
    assert _run_plan(["--model", "llava-1.5-7b"]) == 2
    assert "no GPU detected" in capsys.readouterr().err
    a10g = DetectedGPU("NVIDIA A10G", 23028 * 1024**2, (8, 6))
    monkeypatch.setattr(gpus_module, "detect_gpus", lambda: [a10g, a10g])
    assert _run_plan(["--model", "llava-1.5-7b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpu"] == "2x A10G"


# -- vLLM accepts what the planner writes --------------------------------------------------------

_ENGINE_CHECK = textwrap.dedent(
    """
    import dataclasses, json, sys
    # The PyPI wheel only detects CUDA (VLLM_TARGET_DEVICE is a build-time switch in 0.26), so
    # pin the CPU platform before anything asks vLLM for its current platform.
    import vllm.platforms
    from vllm.platforms.cpu import CpuPlatform
    vllm.platforms.current_platform = CpuPlatform()
    from vllm import AsyncEngineArgs
    cases = json.load(sys.stdin)
    fields = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    results = []
    for case in cases:
        unknown = sorted(set(case["engine_args"]) - fields)
        error = None
        if case["model"] and not unknown:
            try:
                AsyncEngineArgs(model=case["model"], **case["engine_args"]).create_engine_config()
            except Exception as exc:  # report, the test decides
                error = f"{type(exc).__name__}: {exc}"
        results.append({"unknown": unknown, "error": error})
    print("RESULTS" + json.dumps(results))
    """
)


def _check_with_vllm(cases: list[dict]) -> list[dict]:
    # A subprocess, so the CPU platform is pinned before vLLM's first import; VLLM_TARGET_DEVICE
    # is set for builds that read it at run time.
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _ENGINE_CHECK],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULTS")), None)
    assert line is not None, done.stderr[-3000:]
    return json.loads(line[len("RESULTS") :])


def test_engine_args_are_accepted_by_vllm(tiny_llava_dir: Path) -> None:
    pytest.importorskip("vllm")
    # Two real engine configs (bf16 unquantized; fp16 with in-flight bitsandbytes): vLLM's
    # import dominates the time, each config adds a few seconds.
    tiny = [plan_for("llava-1.5-7b", spec) for spec in ("H100", "T4")]
    assert [p.quantization for p in tiny] == ["none", "bitsandbytes"]
    cases = [{"model": str(tiny_llava_dir), "engine_args": p.engine_args()} for p in tiny]
    matrix = [plan_for(m, g.name.replace(" ", "")) for m in CATALOG for g in GPU_CATALOG]
    cases += [{"model": None, "engine_args": p.engine_args()} for p in matrix if p.fits]
    results = _check_with_vllm(cases)
    assert all(not r["unknown"] for r in results), [r for r in results if r["unknown"]]
    assert [r["error"] for r in results[: len(tiny)]] == [None] * len(tiny)


def test_plan_dataclass_round_trips_to_json() -> None:
    plan = plan_for("phi-3-vision", "RTX4080")
    body = json.loads(json.dumps(plan.to_dict()))
    names = {f.name for f in dataclasses.fields(Plan)}
    assert names <= set(body)


def test_fewer_images_per_request_rather_than_a_refusal() -> None:
    """Eight 16-crop Phi-3-V images do not fit one request's KV cache on 8 GB; two do."""
    plan = plan_for("phi-3-vision", "RTX3070", max_images=8)
    assert plan.fits
    assert plan.images_per_prompt == 2
    assert plan.engine_args()["limit_mm_per_prompt"] == {"image": 2}
    assert plan.kv_cache_tokens >= plan.max_model_len
    assert any("Only 2 of the 8 images" in line for line in plan.explanation)
    roomy = plan_for("phi-3-vision", "A10G", max_images=8)
    assert roomy.images_per_prompt == 8


def test_plans_turn_on_vllms_prefix_and_image_caches() -> None:
    workload = Workload.from_settings(Settings())
    sizes = {}
    for name in ("llava-1.5-7b", "internvl2-8b"):
        plan = plan_model(CATALOG[name], gpus_to_plan_for("A100-80GB"), workload, Overrides())
        args = plan.engine_args()
        assert args["enable_prefix_caching"] is True
        assert 0.5 <= args["mm_processor_cache_gb"] <= 8
        sizes[name] = args["mm_processor_cache_gb"]
    # InternVL-2's tiles make its images several times larger than LLaVA-1.5's.
    assert sizes["internvl2-8b"] >= sizes["llava-1.5-7b"]


def test_every_planned_vllm_setting_is_an_override() -> None:
    """A setting marked PLANNED in config.py that the planner does not take fails here."""
    from vlmserve.config import vllm_setting_names

    names = vllm_setting_names(planned=True)
    assert {f.name for f in dataclasses.fields(Overrides)} == set(names)
    assert "gpu_memory_utilization" in names and "load_format" not in names
    assert vllm_setting_names(planned=False) == ("load_format", "enforce_eager")
    values = {"dtype": "float16", "max_num_seqs": 8, "gpu_memory_utilization": 0.5}
    assert Overrides.from_settings(Settings(**values)).given() == values
