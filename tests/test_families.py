"""Model families: image-token rules against the real processors, prompt formats, tiny builds.

The transformers-native families are checked here through ``AutoProcessor``; the original-format
families (phi3v, internvl2) have their own processors and their own test files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoProcessor

from vlmserve.cli.main import main
from vlmserve.models.families import FAMILIES, family_for_checkpoint, get_family

NATIVE = ("llava", "llava-next", "internvl")
SIZES = [(336, 336), (640, 480), (1024, 200), (100, 900), (672, 672), (2000, 1000), (33, 17)]


def image_token_count(processor, family: str, size: tuple[int, int], detail: str) -> int:
    """Tokens the real processor puts in the prompt for one image (delimiters included)."""
    rule = get_family(family)
    messages = [{"role": "user", "content": [{"type": "image"}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = rule.prepare_image(Image.new("RGB", size), detail)
    with_image = processor(
        text=prompt, images=[image], return_tensors="pt", **rule.processor_kwargs(detail)
    )
    without = processor.tokenizer(prompt.replace(rule.image_placeholder, ""))
    return with_image["input_ids"].shape[1] - len(without["input_ids"])


@pytest.mark.parametrize("family", NATIVE)
@pytest.mark.parametrize("detail", ["high", "low"])
def test_image_token_rule_matches_processor(tiny_model, family: str, detail: str) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model(family))
    rule = get_family(family)
    for size in SIZES:
        assert image_token_count(processor, family, size, detail) == rule.image_tokens(
            *size, detail
        ), size


@pytest.mark.parametrize("family", ["llava-next", "internvl", "internvl2", "phi3v"])
def test_low_detail_cuts_tokens_for_large_images(family: str) -> None:
    rule = get_family(family)
    assert rule.image_tokens(1600, 1200, "low") < rule.image_tokens(1600, 1200, "high")
    assert rule.image_tokens(1600, 1200, "auto") == rule.image_tokens(1600, 1200, "high")


def test_max_image_tokens_is_the_largest_count() -> None:
    sizes = [(w, h) for w in range(100, 2100, 150) for h in range(100, 2100, 150)]
    for rule in FAMILIES.values():
        assert max(rule.image_tokens(w, h) for w, h in sizes) <= rule.max_image_tokens()
    assert get_family("llava").max_image_tokens() == 576
    assert get_family("llava-next").max_image_tokens() == 2928
    assert get_family("internvl").max_image_tokens() == 13 * 256 + 2


EXPECTED_PROMPTS = {
    "llava": "USER: <image>\nhi ASSISTANT:",
    "llava-next": "[INST] <image>\nhi [/INST]",
    "internvl": "<|im_start|>user\n<IMG_CONTEXT>\nhi<|im_end|>\n<|im_start|>assistant\n",
}


@pytest.mark.parametrize("family", NATIVE)
def test_prompt_format(tiny_model, family: str) -> None:
    processor = AutoProcessor.from_pretrained(tiny_model(family))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == EXPECTED_PROMPTS[family]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiny_checkpoint_is_small_and_recognised(tiny_model, family: str) -> None:
    path = tiny_model(family)
    size = sum(f.stat().st_size for f in path.iterdir())
    # phi3v keeps the real 32,064-token vocabulary (vLLM hard-codes its image token id).
    assert size < 16_000_000
    assert family_for_checkpoint(path).name == family
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == list(get_family(family).architectures)


def test_tiny_model_command_writes_a_checkpoint(tmp_path: Path, capsys) -> None:
    assert main(["tiny-model", "llava", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert "tiny llava checkpoint" in capsys.readouterr().out


def test_unknown_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="not served"):
        family_for_checkpoint(tmp_path)
