"""The model catalogue, the GPU catalogue and resolving ``--model`` to a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tests.helpers import hf_cache_snapshot
from vlmserve.cli import models as models_cmd
from vlmserve.cli.model_source import ModelNotFoundError, resolve_model
from vlmserve.config import Settings
from vlmserve.models.catalog import (
    CATALOG,
    HARDWARE_TABLE,
    find_by_repo,
    get_model,
    max_image_tokens,
)
from vlmserve.models.families import FAMILIES
from vlmserve.planner.gpus import DetectedGPU, match_detected, parse_gpu_spec

# REFERENCE.md section 2 as the project recorded it: name, repo, L, hidden, heads, kv, inter, vocab.
REFERENCE_ARCHITECTURES = [
    ("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", 32, 4096, 32, 32, 11008, 32064),
    ("llava-1.5-13b", "llava-hf/llava-1.5-13b-hf", 40, 5120, 40, 40, 13824, 32064),
    ("llava-1.6-mistral-7b", "llava-hf/llava-v1.6-mistral-7b-hf", 32, 4096, 32, 8, 14336, 32064),
    ("llava-1.6-34b", "llava-hf/llava-v1.6-34b-hf", 60, 7168, 56, 8, 20480, 64064),
    ("internvl2-1b", "OpenGVLab/InternVL2-1B", 24, 896, 14, 2, 4864, 151655),
    ("internvl2-2b", "OpenGVLab/InternVL2-2B", 24, 2048, 16, 8, 8192, 92553),
    ("internvl2-4b", "OpenGVLab/InternVL2-4B", 32, 3072, 32, 32, 8192, 32020),
    ("internvl2-8b", "OpenGVLab/InternVL2-8B", 32, 4096, 32, 8, 14336, 92553),
    ("internvl2-26b", "OpenGVLab/InternVL2-26B", 48, 6144, 48, 8, 16384, 92553),
    ("internvl2-76b", "OpenGVLab/InternVL2-Llama3-76B", 80, 8192, 64, 8, 28672, 128261),
    ("phi-3-vision", "microsoft/Phi-3-vision-128k-instruct", 32, 3072, 32, 32, 8192, 32064),
    ("phi-3.5-vision", "microsoft/Phi-3.5-vision-instruct", 32, 3072, 32, 32, 8192, 32064),
]

# Parameter counts the model cards publish (Hugging Face "Model size"), in billions.
PUBLISHED_PARAMS_B = {
    "llava-1.5-7b": 7.06,
    "llava-1.5-13b": 13.4,
    "llava-1.6-mistral-7b": 7.57,
    "llava-1.6-34b": 34.8,
    "internvl2-1b": 0.94,
    "internvl2-2b": 2.21,
    "internvl2-4b": 4.15,
    "internvl2-8b": 8.08,
    "internvl2-26b": 25.5,
    "internvl2-76b": 76.3,
    "phi-3-vision": 4.15,
    "phi-3.5-vision": 4.15,
}


@pytest.mark.parametrize("row", REFERENCE_ARCHITECTURES, ids=lambda r: r[0])
def test_every_reference_model_is_catalogued_with_its_numbers(row: tuple) -> None:
    name, repo, layers, hidden, heads, kv, inter, vocab = row
    model = get_model(name)
    text = model.text
    assert model.repo == repo
    assert (text.layers, text.hidden, text.heads, text.kv_heads) == (layers, hidden, heads, kv)
    assert (text.intermediate, text.vocab) == (inter, vocab)


def test_catalogue_holds_exactly_the_reference_models() -> None:
    assert set(CATALOG) == {row[0] for row in REFERENCE_ARCHITECTURES}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_B))
def test_computed_parameters_match_the_model_cards(name: str) -> None:
    computed = get_model(name).params() / 1e9
    assert computed == pytest.approx(PUBLISHED_PARAMS_B[name], rel=0.02)


def test_kv_bytes_per_token_follow_the_formula() -> None:
    llava = get_model("llava-1.5-7b").text
    assert llava.kv_bytes_per_token(2) == 512 * 1024  # REFERENCE.md's worked example
    mistral = get_model("llava-1.6-mistral-7b").text
    assert mistral.kv_bytes_per_token(2) * 4 == llava.kv_bytes_per_token(2)  # 8 of 32 kv heads
    assert mistral.kv_bytes_per_token(2, tensor_parallel=2) * 2 == mistral.kv_bytes_per_token(2)
    tiny_kv = get_model("internvl2-1b").text  # 2 kv heads: more GPUs than heads replicate them
    assert tiny_kv.kv_bytes_per_token(2, 4) == tiny_kv.kv_bytes_per_token(2, 2)


@pytest.mark.parametrize("model", list(CATALOG.values()), ids=lambda m: m.name)
def test_image_tokens_come_from_the_family(model) -> None:  # type: ignore[no-untyped-def]
    assert model.family in FAMILIES
    assert max_image_tokens(model) == FAMILIES[model.family].max_image_tokens()


def test_original_format_families_match_their_published_rules() -> None:
    # Phi-3-V: Microsoft's calc_num_image_tokens_from_image_size, (crops + 1) x 144 + 1 +
    # (rows + 1) x 12, is largest for the 16 x 1 grid at num_crops 16. InternVL-2 tiles as InternVL.
    assert max_image_tokens(get_model("phi-3-vision")) == 2653
    assert max_image_tokens(get_model("internvl2-8b")) == FAMILIES["internvl"].max_image_tokens()


def test_hardware_rows_are_used_and_name_known_gpus() -> None:
    used = {m.hardware_row for m in CATALOG.values() if m.hardware_row}
    assert used == set(HARDWARE_TABLE)
    for row in HARDWARE_TABLE.values():
        assert parse_gpu_spec(row.minimum_gpu) and parse_gpu_spec(row.recommended_gpu)


def test_quantized_repos_use_vllm_method_names() -> None:
    from vlmserve.planner.memory import LINEAR_BITS

    for model in CATALOG.values():
        for variant in model.quantized:
            assert variant.method in LINEAR_BITS and variant.method in ("awq", "gptq")
            assert find_by_repo(variant.repo) is model


def test_models_command_prints_every_entry_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert models_cmd.run(argparse.Namespace(json=True)) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(CATALOG)
    by_name = {r["name"]: r for r in rows}
    assert by_name["llava-1.6-34b"]["min_gpu"] == "A100-40GB"
    assert by_name["internvl2-76b"]["params_b"] > by_name["internvl2-26b"]["params_b"]


def test_models_command_table_lists_every_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert models_cmd.run(argparse.Namespace(json=False)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(CATALOG) + 1
    assert all(any(line.startswith(name) for line in lines) for name in CATALOG)


# -- GPU catalogue (REFERENCE.md section 3) -----------------------------------------------------

GPU_TABLE = [  # spec, GiB (rounded), compute capability, bf16, fp8
    ("RTX3060", 12, (8, 6), True, False),
    ("rtx 3070", 8, (8, 6), True, False),
    ("RTX-4080", 16, (8, 9), True, True),
    ("t4", 15, (7, 5), False, False),
    ("A10G", 22, (8, 6), True, False),
    ("L4", 22, (8, 9), True, True),
    ("A100-40GB", 40, (8, 0), True, False),
    ("a100-80gb", 80, (8, 0), True, False),
    ("H100", 80, (9, 0), True, True),
    ("H200", 140, (9, 0), True, True),
]


@pytest.mark.parametrize("row", GPU_TABLE, ids=lambda r: r[0])
def test_gpu_specs_parse_with_their_properties(row: tuple) -> None:
    spec, memory, cc, bf16, fp8 = row
    [gpu] = parse_gpu_spec(spec)
    assert round(gpu.memory_gib) == memory
    assert (gpu.compute_capability, gpu.bf16, gpu.fp8) == (cc, bf16, fp8)


def test_gpu_spec_counts_and_errors() -> None:
    assert [g.name for g in parse_gpu_spec("2xA10G")] == ["A10G", "A10G"]
    assert len(parse_gpu_spec("4 x h100")) == 4
    assert parse_gpu_spec("A100")[0].name == "A100-40GB"
    with pytest.raises(ValueError, match="unknown GPU"):
        parse_gpu_spec("Voodoo5")
    with pytest.raises(ValueError, match="at least 1"):
        parse_gpu_spec("0xA10G")


@pytest.mark.parametrize(
    ("reported", "memory_mib", "expected"),
    [
        ("NVIDIA A10G", 23028, "A10G"),
        ("NVIDIA H100 80GB HBM3", 81559, "H100"),
        ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
        ("NVIDIA A100-PCIE-40GB", 40960, "A100-40GB"),
        ("Tesla T4", 15360, "T4"),
        ("NVIDIA GeForce RTX 3060", 12288, "RTX 3060"),
        ("NVIDIA L40S", 46068, "NVIDIA L40S"),  # not an L4: planned from what NVML says
    ],
)
def test_detected_gpus_match_the_catalogue(reported: str, memory_mib: int, expected: str) -> None:
    gpu = match_detected(DetectedGPU(reported, memory_mib * 1024**2, (8, 9)))
    assert gpu.name == expected
    assert gpu.memory_mib == memory_mib


# -- resolving --model --------------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def test_local_folder_resolves_to_itself(tiny_llava_dir: Path) -> None:
    resolved = resolve_model(str(tiny_llava_dir))
    assert resolved.path == tiny_llava_dir.resolve()
    assert resolved.repo_id is None


def test_catalogue_name_resolves_to_cached_snapshot(
    tiny_llava_dir: Path, offline_hub: Path
) -> None:
    snapshot = hf_cache_snapshot(offline_hub, "llava-hf/llava-1.5-7b-hf", tiny_llava_dir)
    resolved = resolve_model("llava-1.5-7b", Settings())
    assert resolved.path == snapshot
    assert (resolved.path / "config.json").is_file()
    assert resolved.catalog is get_model("llava-1.5-7b")
    by_repo = resolve_model("llava-hf/llava-1.5-7b-hf")
    assert by_repo.path == snapshot and by_repo.catalog is get_model("llava-1.5-7b")


def test_offline_and_absent_names_the_repo_and_the_fix(offline_hub: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"llava-hf/llava-v1.6-34b-hf.*huggingface-cli"):
        resolve_model("llava-1.6-34b")


def test_quantization_setting_picks_the_published_checkpoint(
    offline_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLMSERVE_QUANTIZATION", "awq")
    with pytest.raises(ModelNotFoundError, match="mesolitica/llava-v1.6-34b-hf-awq"):
        resolve_model("llava-1.6-34b", Settings())


def test_unknown_name_is_a_clear_error(offline_hub: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not a folder, a catalogue model"):
        resolve_model("no-such-model")
