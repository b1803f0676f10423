"""What the ``/v1/files`` and ``/v1/batches`` routes do, apart from HTTP.

Every object belongs to an owner (the caller's API key, see :func:`owner_of`); another owner's id
answers 404, exactly as an id that does not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from typing import Any, Literal

from vlmserve.api.admission import Admission
from vlmserve.api.chat import ChatHandler
from vlmserve.api.errors import BadRequestError, NotFoundError
from vlmserve.api.protocol import now
from vlmserve.batch.files import FileArea, Readable, new_file_id
from vlmserve.batch.lines import ENDPOINTS, invalid_line, parse_file
from vlmserve.batch.objects import batch_object, file_object, page
from vlmserve.batch.runner import BatchRunner
from vlmserve.batch.store import BatchRecord, BatchStore, FileRecord, LineRecord
from vlmserve.config import Settings

logger = logging.getLogger(__name__)

#: The only completion window, as on OpenAI's API.
COMPLETION_WINDOWS = {"24h": 24 * 3600}


def owner_of(token: str | None) -> str:
    """The owner id of an API key: a digest, so ownership survives reordering the key list.

    ``None`` (no keys configured) is the one shared owner, ``anonymous``.
    """
    if token is None:
        return "anonymous"
    return "key-sha256:" + hashlib.sha256(token.encode()).hexdigest()[:32]


class BatchService:
    """Files and batches for one server, with the worker that runs the batches."""

    def __init__(self, settings: Settings, handler: ChatHandler, admission: Admission) -> None:
        root = settings.batch_dir or settings.cache_dir / "batches"
        self.settings = settings
        self.model_id = handler.model_id
        self.store = BatchStore(root / "batches.db")
        self.area = FileArea(root / "files")
        self.runner = BatchRunner(self.store, self.area, handler, settings, admission)

    # -- files -----------------------------------------------------------------------------------

    async def upload(
        self, owner: str, upload: Readable, filename: str, purpose: str
    ) -> dict[str, Any]:
        """Store an upload for the Batch API."""
        if purpose != "batch":
            raise BadRequestError(
                f"This server keeps files for the Batch API only: purpose must be 'batch', "
                f"not {purpose!r}.",
                param="purpose",
            )
        file_id = new_file_id()
        size = await self.area.save(file_id, upload, self.settings.batch_max_file_bytes)
        record = FileRecord(file_id, owner, purpose, filename, size, now())
        self.store.add_file(record)
        logger.info("file %s: %d bytes uploaded", file_id, size)
        return file_object(record)

    def file(self, owner: str, file_id: str) -> FileRecord:
        """``owner``'s file ``file_id``, or a 404."""
        record = self.store.get_file(file_id, owner)
        if record is None:
            raise NotFoundError(f"No such File object: {file_id}", param="file_id")
        return record

    def list_files(
        self,
        owner: str,
        purpose: str | None,
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
    ) -> dict[str, Any]:
        """One page of ``owner``'s files."""
        records, more = self.store.list_files(owner, purpose, after, limit, order)
        return page([file_object(r) for r in records], more)

    def delete_file(self, owner: str, file_id: str) -> dict[str, Any]:
        """Delete a file, unless an unfinished batch still reads it."""
        self.file(owner, file_id)
        using = self.store.batch_using(file_id)
        if using is not None:
            raise BadRequestError(
                f"The file is the input of batch {using}, which has not finished; cancel it "
                "or wait for it to end.",
                param="file_id",
                code="file_in_use",
            )
        self.store.delete_file(file_id)
        self.area.delete(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches ---------------------------------------------------------------------------------

    async def create(
        self,
        owner: str,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
    ) -> dict[str, Any]:
        """Check the input file line by line and queue the batch (a 400 if the file is unusable)."""
        if endpoint not in ENDPOINTS:
            raise BadRequestError(
                f"endpoint must be one of {', '.join(ENDPOINTS)}.", param="endpoint"
            )
        if completion_window not in COMPLETION_WINDOWS:
            raise BadRequestError("completion_window must be '24h'.", param="completion_window")
        source = self.store.get_file(input_file_id, owner)
        if source is None:
            raise NotFoundError(f"No such File object: {input_file_id}", param="input_file_id")
        if source.purpose != "batch":
            raise BadRequestError(
                "The input file must have been uploaded with purpose 'batch'.",
                param="input_file_id",
            )
        path = self.area.path(input_file_id)
        limits = (self.settings.batch_max_lines, self.settings.request_body_limit())
        parsed = await asyncio.to_thread(parse_file, path, endpoint, *limits)
        lines = [
            LineRecord(p.line_no, p.offset, p.length, p.custom_id)
            if p.error is None
            else LineRecord(
                p.line_no,
                p.offset,
                p.length,
                p.custom_id,
                "failed",
                json.dumps(invalid_line(p.custom_id, f"line {p.line_no + 1}: {p.error}")),
            )
            for p in parsed
        ]
        created = now()
        record = BatchRecord(
            id=f"batch_{uuid.uuid4().hex}",
            owner=owner,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            status="in_progress",
            metadata=json.dumps(metadata) if metadata else None,
            model=self.model_id,
            total=len(lines),
            created_at=created,
            expires_at=created + COMPLETION_WINDOWS[completion_window],
            in_progress_at=created,
        )
        await asyncio.to_thread(self.store.create_batch, record, lines)
        self.runner.wake()
        logger.info("batch %s: %d lines queued", record.id, len(lines))
        return self.batch(owner, record.id)

    def batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        """``owner``'s batch with its current counts, or a 404."""
        record = self.store.get_batch(batch_id, owner)
        if record is None:
            raise NotFoundError(f"No such Batch object: {batch_id}", param="batch_id")
        return batch_object(record, self.store.counts(batch_id))

    def list_batches(self, owner: str, after: str | None, limit: int) -> dict[str, Any]:
        """One page of ``owner``'s batches, newest first."""
        records, more = self.store.list_batches(owner, after, limit)
        return page([batch_object(r, self.store.counts(r.id)) for r in records], more)

    def cancel(self, owner: str, batch_id: str) -> dict[str, Any]:
        """Stop starting lines; lines already finished stay in the output."""
        current = self.batch(owner, batch_id)
        if current["status"] in ("cancelling", "cancelled"):
            return current
        if not self.store.update_batch(
            batch_id, only_if=("in_progress",), status="cancelling", cancelling_at=now()
        ):
            raise BadRequestError(
                f"The batch is {current['status']} and can no longer be cancelled.",
                param="batch_id",
                code="batch_not_cancellable",
            )
        self.runner.wake()
        logger.info("batch %s: cancelling", batch_id)
        return self.batch(owner, batch_id)
