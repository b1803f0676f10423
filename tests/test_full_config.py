"""Full-size configuration folders for ``load_format=dummy`` benchmarks, written offline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

from vlmserve.config import Settings
from vlmserve.engine.base import EngineRequest, ImageInput, SamplingOptions
from vlmserve.models.catalog import get_model
from vlmserve.models.families import get_family
from vlmserve.models.full_config import write_full_config

#: Catalogue models in transformers' layout, with their parameter counts as the model pages give
#: them (exact for the 7B models, rounded to 13.4B and 34.8B for the others).
PUBLISHED_PARAMS = {
    "llava-1.5-7b": 7_063_427_072,
    "llava-1.5-13b": 13.35e9,
    "llava-1.6-mistral-7b": 7_566_747_648,
    "llava-1.6-34b": 34.76e9,
}


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``full_dir(name)`` -> the written folder, once per name."""
    root = tmp_path_factory.mktemp("full")
    written: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in written:
            written[name] = write_full_config(name, root / name)
        return written[name]

    return get


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_dimensions_give_the_published_parameter_count(
    name: str, full_dir: Callable[[str], Path]
) -> None:
    path = full_dir(name)
    assert not list(path.glob("*.safetensors"))
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(PUBLISHED_PARAMS[name], rel=0.005)
    assert params == pytest.approx(get_model(name).params(), rel=0.005)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_tokenizer_covers_the_whole_vocabulary(name: str, full_dir: Callable[[str], Path]) -> None:
    path = full_dir(name)
    vocab = get_model(name).text.vocab
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == vocab
    assert tokenizer.decode([vocab - 1]) == f"<filler{vocab - 1}>"
    ids = tokenizer("describe the picture")["input_ids"]
    assert max(ids) < 1000
    assert tokenizer.decode(ids) == "describe the picture"


def test_original_layouts_are_written_by_their_family(tmp_path: Path) -> None:
    path = write_full_config("internvl2-8b", tmp_path / "internvl2-8b")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"]


@pytest.mark.timeout(900)
def test_vllm_builds_the_dummy_weight_engine_config(full_dir: Callable[[str], Path]) -> None:
    pytest.importorskip("vllm")
    from tests import vllm_cpu

    vllm_cpu.install()
    from vllm.renderers import renderer_from_config

    from vlmserve.engine import vllm_engine, vllm_prepare

    name = "llava-1.5-7b"
    path = full_dir(name)
    settings = Settings(load_format="dummy", max_model_len=4096)
    config = vllm_engine.build_vllm_config(vllm_engine.engine_args_from_settings(settings, path))
    assert config.load_config.load_format == "dummy"
    assert config.model_config.get_vocab_size() == get_model(name).text.vocab
    assert config.model_config.get_hidden_size() == get_model(name).text.hidden
    family = get_family(get_model(name).family)
    request = EngineRequest(
        "r",
        SamplingOptions(max_tokens=4),
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        images=[ImageInput(Image.new("RGB", (800, 600), "teal"), "high")],
    )
    engine_input = asyncio.run(
        vllm_prepare.render_request(renderer_from_config(config), family, request)
    )
    lengths = [p.length for p in engine_input["mm_placeholders"]["image"]]
    assert lengths == [family.image_tokens(800, 600)]
