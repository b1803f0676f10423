"""File bodies on disk: uploads streamed in under a size limit, output files written atomically.

Each file is one plain file named by its id under ``files/``. A body is written to a temporary
name and renamed into place, so a file the store knows is always complete, even after a kill.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from vlmserve.api.errors import BadRequestError

_CHUNK = 1 << 20


class Readable(Protocol):
    """What an upload offers: chunked async reads (Starlette's ``UploadFile``)."""

    async def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; empty at the end."""
        ...


def new_file_id() -> str:
    """A fresh ``file-`` id."""
    return f"file-{uuid.uuid4().hex}"


class FileArea:
    """The folder holding file bodies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("*.part"):
            stale.unlink()  # left by a kill mid-write; no record points to it

    def path(self, file_id: str) -> Path:
        """Where the body of ``file_id`` lives."""
        return self.root / file_id

    async def save(self, file_id: str, upload: Readable, limit: int) -> int:
        """Copy an upload to disk; a 400 (and nothing kept) when it is over ``limit`` bytes."""
        part = self.root / f"{file_id}.part"
        size = 0
        try:
            with part.open("wb") as out:
                while chunk := await upload.read(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise BadRequestError(
                            f"The file is larger than this server's limit of {limit} bytes.",
                            param="file",
                            code="file_too_large",
                        )
                    out.write(chunk)
                _sync(out.fileno())
            part.rename(self.path(file_id))
        finally:
            part.unlink(missing_ok=True)
        return size

    def write_lines(self, file_id: str, lines: Iterable[str]) -> int:
        """Write ``lines`` (one JSON document each) as ``file_id``; returns its size in bytes."""
        part = self.root / f"{file_id}.part"
        with part.open("w", encoding="utf-8") as out:
            for line in lines:
                out.write(line + "\n")
            out.flush()
            _sync(out.fileno())
        part.rename(self.path(file_id))
        return self.path(file_id).stat().st_size

    def delete(self, file_id: str) -> None:
        """Remove a body (gone already is fine)."""
        self.path(file_id).unlink(missing_ok=True)


def _sync(fd: int) -> None:
    os.fsync(fd)
