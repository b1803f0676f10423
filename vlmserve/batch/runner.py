"""The server's batch worker: runs pending lines in the gaps interactive requests leave.

One batch at a time, oldest first, lines in file order. At most ``batch_max_in_flight`` lines run
at once, and only ``batch_max_in_flight_when_busy`` while any interactive chat request is in
flight; each line also carries a low engine priority, so the engine serves interactive requests
first. Each finished line is committed on its own (result and state in one transaction), so a
killed server resumes where it stopped. A line the server could not serve at the moment (a 503:
shutting down, overloaded) is not recorded; it stays pending and runs again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from vlmserve.api.admission import Admission
from vlmserve.api.chat import ChatHandler
from vlmserve.batch.files import FileArea
from vlmserve.batch.lines import LineResult, expired_line, invalid_line, read_line, run_line
from vlmserve.batch.store import BatchRecord, BatchStore, FileRecord, LineRecord, LineState
from vlmserve.config import Settings

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.02
_RETRY_SECONDS = 1.0


class BatchRunner:
    """Runs the store's active batches until stopped."""

    def __init__(
        self,
        store: BatchStore,
        area: FileArea,
        handler: ChatHandler,
        settings: Settings,
        admission: Admission,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.area = area
        self.handler = handler
        self.settings = settings
        self.admission = admission
        self.clock = clock
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start working (call once the engine is ready)."""
        self._task = asyncio.create_task(self._work(), name="batch-runner")

    async def stop(self) -> None:
        """Stop at once; lines in flight are aborted and stay pending for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        """Look for work now (a batch was created or cancelled)."""
        self._wake.set()

    async def _work(self) -> None:
        try:
            while True:
                self._wake.clear()
                active = self.store.active_batches()
                if not active:
                    await self._wake.wait()
                    continue
                for batch_id in active:
                    if not await self._run_batch(batch_id):
                        await asyncio.sleep(_RETRY_SECONDS)
                        break
        except asyncio.CancelledError:
            for task in self._in_flight:
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            raise
        except Exception:
            logger.exception("the batch worker stopped on an unexpected error")
            raise

    async def _run_batch(self, batch_id: str) -> bool:
        """Run a batch's pending lines, then close it; False when lines were left to retry."""
        record = self.store.get_batch(batch_id)
        if record is None:
            return True
        retry: list[int] = []
        expired = False
        if record.status == "in_progress":
            pending = self.store.pending_lines(batch_id)
            logger.info("batch %s: %d pending lines to run", batch_id, len(pending))
            for line in pending:
                await self._slot()
                record = self.store.get_batch(batch_id) or record
                expired = record.expires_at is not None and self.clock() > record.expires_at
                if record.status != "in_progress" or expired:
                    break
                self._spawn(self._run_one(record, line, retry))
            for failure in await asyncio.gather(*self._in_flight, return_exceptions=True):
                if isinstance(failure, Exception):
                    logger.error("batch %s: a line failed to run", batch_id, exc_info=failure)
        if retry:
            logger.warning("batch %s: %d lines will be retried", batch_id, len(retry))
            return False
        if expired:
            self._expire_rest(record)
        await asyncio.to_thread(self._finalize, batch_id)
        return True

    async def _slot(self) -> None:
        """Wait until one more line may start: in-flight bounds, and never while draining."""
        while True:
            busy = self.admission.in_flight > 0
            limit = (
                self.settings.batch_max_in_flight_when_busy
                if busy
                else self.settings.batch_max_in_flight
            )
            if not self.admission.draining and len(self._in_flight) < limit:
                return
            await asyncio.sleep(_POLL_SECONDS)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _run_one(self, record: BatchRecord, line: LineRecord, retry: list[int]) -> None:
        """Run one line and commit its result (a 503 is left pending for a later pass)."""
        custom_id = str(line.custom_id)
        try:
            item = read_line(self.area.path(record.input_file_id), line.offset, line.length)
        except (OSError, ValueError) as exc:
            failure = LineResult(False, invalid_line(custom_id, f"unreadable line: {exc}"))
            self._commit(record.id, line.line_no, failure)
            return
        result = await run_line(
            self.handler, custom_id, item["body"], self.settings.request_timeout_seconds
        )
        if not result.ok and result.line["response"]["status_code"] == 503:
            retry.append(line.line_no)
            return
        self._commit(record.id, line.line_no, result)

    def _commit(self, batch_id: str, line_no: int, result: LineResult) -> None:
        state: LineState = "done" if result.ok else "failed"
        tokens = (result.prompt_tokens, result.completion_tokens)
        if not self.store.finish_line(batch_id, line_no, state, result.line, tokens):
            logger.warning("batch %s line %d was already finished", batch_id, line_no)

    def _expire_rest(self, record: BatchRecord) -> None:
        for line in self.store.pending_lines(record.id):
            self.store.finish_line(record.id, line.line_no, "failed", expired_line(line.custom_id))

    def _finalize(self, batch_id: str) -> None:
        """Write the output and error files from the stored results, then close the batch."""
        record = self.store.get_batch(batch_id)
        if record is None:
            return
        now = int(self.clock())
        if record.status == "cancelling":
            final = "cancelled"
        else:
            if record.status == "in_progress":
                record.finalizing_at = now
                self.store.update_batch(batch_id, status="finalizing", finalizing_at=now)
            ended = record.finalizing_at or now
            expired = record.expires_at is not None and ended > record.expires_at
            final = "expired" if expired else "completed"
        counts = self.store.counts(batch_id)
        files: dict[str, FileRecord] = {}
        parts: tuple[tuple[LineState, str, int], ...] = (
            ("done", "output", counts.completed),
            ("failed", "error", counts.failed),
        )
        for state, suffix, wanted in parts:
            if not wanted:
                continue
            file_id = f"file-{batch_id.removeprefix('batch_')}-{suffix}"
            size = self.area.write_lines(file_id, self.store.results(batch_id, state))
            name = f"{batch_id}_{suffix}.jsonl"
            files[suffix] = FileRecord(file_id, record.owner, "batch_output", name, size, now)
        output, error = files.get("output"), files.get("error")
        closed = replace(
            record,
            status=final,
            output_file_id=output.id if output else None,
            error_file_id=error.id if error else None,
        )
        setattr(closed, f"{final}_at", now)
        self.store.close_batch(closed, list(files.values()))
        logger.info("batch %s: %s", batch_id, final)
