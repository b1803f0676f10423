"""``vlmserve plan --model FOLDER_OR_REPO_ID``: any checkpoint is planned from its config.json.

A checkpoint's numbers must give the same plan as the catalogue entry of the same model, a repo id
is found in the Hugging Face cache without the network, and the plan's ``engine_args`` are
accepted by vLLM's own engine-argument checks for every family's tiny checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAMILIES
from tests.helpers import REPO, hf_cache_snapshot
from vlmserve.cli.plan import model_to_plan
from vlmserve.models.catalog import get_model, max_image_tokens
from vlmserve.models.checkpoint import CheckpointConfigError, checkpoint_model
from vlmserve.models.full_config import write_full_config
from vlmserve.planner.gpus import gpus_to_plan_for
from vlmserve.planner.plan import Workload
from vlmserve.planner.planner import plan_model

#: The keys of llava-hf/llava-1.5-7b-hf's published config.json that size the model. Its
#: text_config leaves out everything equal to LlamaConfig's defaults (layers, widths, heads).
HUB_LLAVA_15_7B = {
    "architectures": ["LlavaForConditionalGeneration"],
    "model_type": "llava",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "vocab_size": 32064,
    },
    "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
    },
    "vision_feature_layer": -2,
}

#: What a plan holds that depends on the model's name or where it is served from.
NAMING = ("model", "repo", "explanation")


def sized(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan's numbers and choices, without the model's name."""
    return {key: value for key, value in plan.items() if key not in NAMING}


def plan_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    """``vlmserve plan ... --json`` as a subprocess: (exit code, plan, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "vlmserve.cli.main", "plan", *args, "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def catalogue_plan(name: str, gpu: str = "A10G") -> dict[str, Any]:
    """The plan of a catalogue entry, as the CLI's JSON has it."""
    plan = plan_model(get_model(name), gpus_to_plan_for(gpu), Workload())
    return plan.to_dict()


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-1.6-mistral-7b", "internvl2-8b"])
def test_full_size_folder_plans_like_its_catalogue_entry(name: str, tmp_path: Path) -> None:
    folder = write_full_config(name, tmp_path / name)
    model = checkpoint_model(folder, name, str(folder))
    assert model.params() == get_model(name).params()
    assert max_image_tokens(model) == max_image_tokens(get_model(name))
    # A GPU on which 16-bit weights fit: a folder has no published AWQ repo to fall back on.
    plan = plan_model(model, gpus_to_plan_for("A100-40GB"), Workload()).to_dict()
    assert sized(plan) == sized(catalogue_plan(name, "A100-40GB"))
    assert plan["repo"] == str(folder)


def test_phi3v_folder_names_its_clip_tower(tmp_path: Path) -> None:
    folder = write_full_config("phi-3-vision", tmp_path / "phi3v")
    model = checkpoint_model(folder, "phi3v", str(folder))
    assert model.vision == get_model("phi-3-vision").vision
    assert sized(plan_model(model, gpus_to_plan_for("RTX3070"), Workload()).to_dict()) == sized(
        catalogue_plan("phi-3-vision", "RTX3070")
    )


def test_config_that_leans_on_defaults_is_completed_from_transformers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(HUB_LLAVA_15_7B))
    model = checkpoint_model(tmp_path, "my-llava", str(tmp_path))
    catalogue = get_model("llava-1.5-7b")
    assert (model.text.layers, model.text.hidden, model.text.intermediate) == (32, 4096, 11008)
    assert model.params() == catalogue.params()
    assert model.text.kv_bytes_per_token(2) == catalogue.text.kv_bytes_per_token(2)


def test_config_without_vision_numbers_is_a_clear_error(tmp_path: Path) -> None:
    config = {k: v for k, v in HUB_LLAVA_15_7B.items() if k != "vision_config"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointConfigError, match="vision_config"):
        checkpoint_model(tmp_path, "x", "x")


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_folder_plan_from_the_command_line(
    family: str, tiny_model: Callable[[str], Path]
) -> None:
    folder = tiny_model(family)
    code, plan, stderr = plan_json("--model", str(folder), "--gpu", "A10G")
    assert code == 0, stderr
    assert plan["fits"] and plan["model"] == folder.name and plan["repo"] == str(folder)
    assert plan["image_tokens"] == max_image_tokens(model_to_plan(str(folder)))
    assert plan["engine_args"]["limit_mm_per_prompt"] == {"image": plan["images_per_prompt"]}


def test_repo_id_plans_from_the_hf_cache_without_the_network(
    tiny_model: Callable[[str], Path], tmp_path: Path
) -> None:
    hf_home = tmp_path / "hf"
    hf_cache_snapshot(hf_home, "someone/tiny-llava", tiny_model("llava"))
    # No HF_HUB_OFFLINE, and an endpoint where nothing listens: only the cache can answer.
    env = {"HF_HOME": str(hf_home), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    code, plan, stderr = plan_json("--model", "someone/tiny-llava", "--gpu", "A10G", env=env)
    assert code == 0, stderr
    assert plan["model"] == plan["repo"] == "someone/tiny-llava"
    code, _, stderr = plan_json("--model", "someone/absent", "--gpu", "A10G", env=env)
    assert code == 2
    assert "someone/absent is not in the Hugging Face cache" in stderr
    assert "HF_HUB_OFFLINE" not in stderr


def test_catalogue_repo_id_plans_as_the_catalogue_entry() -> None:
    code, plan, stderr = plan_json("--model", "llava-hf/llava-1.5-7b-hf", "--gpu", "A10G")
    assert code == 0, stderr
    assert plan == catalogue_plan("llava-1.5-7b")


def test_missing_folder_is_exit_2_with_one_line() -> None:
    code, plan, stderr = plan_json("--model", "/no/such/folder", "--gpu", "A10G")
    assert code == 2 and not plan
    assert stderr.startswith("vlmserve plan: '/no/such/folder' is not a folder")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_accepts_the_engine_args_of_a_tiny_folder_plan(
    family: str, tiny_model: Callable[[str], Path]
) -> None:
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import AsyncEngineArgs

    folder = tiny_model(family)
    code, plan, stderr = plan_json("--model", str(folder), "--gpu", "A10G")
    assert code == 0, stderr
    args = plan["engine_args"]
    config = AsyncEngineArgs(model=plan["repo"], **args).create_engine_config()
    assert config.model_config.max_model_len == args["max_model_len"]
    assert config.scheduler_config.max_num_seqs == args["max_num_seqs"]
    limit = config.model_config.multimodal_config.get_limit_per_prompt("image")
    assert limit == args["limit_mm_per_prompt"]["image"]
