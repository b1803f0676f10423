"""The registry of model families: look one up by name or by a checkpoint's config."""

from __future__ import annotations

import json
from pathlib import Path

from vlmserve.models.base import ModelFamily
from vlmserve.models.internvl import InternVL
from vlmserve.models.internvl2 import InternVL2
from vlmserve.models.llava import Llava15
from vlmserve.models.llava_next import LlavaNext
from vlmserve.models.phi3v import Phi3V

FAMILIES: dict[str, ModelFamily] = {
    f.name: f for f in (Llava15(), LlavaNext(), InternVL(), InternVL2(), Phi3V())
}


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; ``KeyError`` lists the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_for_checkpoint(path: str | Path) -> ModelFamily:
    """The family that serves the checkpoint in ``path``, from its ``config.json`` architectures."""
    config = json.loads((Path(path) / "config.json").read_text())
    architectures = config.get("architectures") or []
    for family in FAMILIES.values():
        if any(arch in family.architectures for arch in architectures):
            return family
    raise ValueError(
        f"{path}: architectures {architectures} are not served by vlmserve "
        f"(known: {', '.join(a for f in FAMILIES.values() for a in f.architectures)})"
    )
