"""Turn ``--model NAME`` into a local checkpoint folder.

A local folder is used as it is. A catalogue name or a Hugging Face repo id becomes its snapshot
folder in the Hugging Face cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``). With ``HF_HUB_OFFLINE=1`` nothing is downloaded, and a repo that is
not in the cache is a clear error that says how to fetch it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlmserve.models.catalog import CATALOG, CatalogModel, find_by_repo

if TYPE_CHECKING:
    from vlmserve.config import Settings

_TRUE = {"1", "true", "yes", "on"}


class ModelNotFoundError(RuntimeError):
    """The model is neither a folder, nor in the cache, nor allowed to be downloaded."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are and what the catalogue knows about it."""

    path: Path
    repo_id: str | None
    catalog: CatalogModel | None


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads (read at call time, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def repo_for(name: str, settings: Settings | None) -> tuple[str, CatalogModel | None]:
    """The repo a catalogue name or repo id stands for.

    When the settings ask for a quantization the catalogue has a published checkpoint for
    (``VLMSERVE_QUANTIZATION=awq``), that checkpoint's repo is the one served.
    """
    entry = CATALOG.get(name)
    if entry is None:
        return name, find_by_repo(name)
    method = settings.quantization if settings is not None else None
    quantized = entry.quantized_repo(method) if method else None
    return (quantized.repo if quantized else entry.repo), entry


def resolve_model(
    name_or_path: str, settings: Settings | None = None, *, offline: bool | None = None
) -> ResolvedModel:
    """The local folder for a model folder, catalogue name or Hugging Face repo id.

    ``offline=True`` looks in the cache only, whatever ``HF_HUB_OFFLINE`` says (``vlmserve
    plan``); ``None`` follows ``HF_HUB_OFFLINE``.
    """
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return ResolvedModel(local.resolve(), None, None)
    if name_or_path not in CATALOG and name_or_path.count("/") != 1:
        raise ModelNotFoundError(
            f"{name_or_path!r} is not a folder, a catalogue model ({', '.join(CATALOG)}) "
            "or a Hugging Face repo id like owner/name"
        )
    repo_id, entry = repo_for(name_or_path, settings)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    by_setting = offline is None
    local_only = hub_offline() if offline is None else offline
    try:
        path = snapshot_download(repo_id, cache_dir=hub_cache_dir(), local_files_only=local_only)
    except LocalEntryNotFoundError:
        unset = ", or unset HF_HUB_OFFLINE" if by_setting else ""
        reason = " and HF_HUB_OFFLINE is set" if by_setting else ""
        raise ModelNotFoundError(
            f"{repo_id} is not in the Hugging Face cache at {hub_cache_dir()}{reason}; fetch it "
            f"on a connected machine with `huggingface-cli download {repo_id}` (same HF_HOME)"
            f"{unset}"
        ) from None
    return ResolvedModel(Path(str(path)), repo_id, entry)
