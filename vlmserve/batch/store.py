"""The durable state of the Batch API: files, batches and every line's state, in SQLite.

One connection in WAL mode, shared by the event loop and worker threads behind a lock. WAL with
``synchronous=NORMAL`` makes every committed transaction survive the process being killed
(SIGKILL, OOM); only a crash of the whole machine may lose the last transactions. A line's result
is written and the line marked finished in ONE statement, guarded by ``state = 'pending'``, so a
line is finished at most once and a restart re-runs exactly the lines that were not.

A line is ``pending`` until it has a result; lines in flight when the server died are simply still
pending, so recovery needs no separate step. Output and error files are assembled from the rows
here when a batch ends.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

LineState = Literal["pending", "done", "failed"]
#: Statuses in which a batch still has work for the runner.
ACTIVE = ("in_progress", "cancelling", "finalizing")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT,
    model TEXT,
    total INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    output_file_id TEXT,
    error_file_id TEXT
);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL,
    line_no INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    custom_id TEXT,
    state TEXT NOT NULL,
    result TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, line_no)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lines_by_state ON lines (batch_id, state, line_no);
"""


@dataclass
class FileRecord:
    """One stored file (its body lives on disk, named by ``id``)."""

    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: int


@dataclass
class BatchRecord:
    """One batch's row; timestamps are Unix seconds, unset until the batch gets there."""

    id: str
    owner: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    metadata: str | None
    model: str | None
    total: int
    created_at: int
    expires_at: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass(frozen=True)
class LineRecord:
    """Where one input line sits in its file, and (for lines failed at creation) its result."""

    line_no: int
    offset: int
    length: int
    custom_id: str | None
    state: LineState = "pending"
    result: str | None = None


@dataclass(frozen=True)
class Counts:
    """A batch's ``request_counts`` and the tokens its successful lines used."""

    total: int
    completed: int
    failed: int
    prompt_tokens: int
    completion_tokens: int


class BatchStore:
    """Files, batches and lines in one SQLite database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- files -----------------------------------------------------------------------------------

    def add_file(self, record: FileRecord) -> None:
        """Record a file whose body has been written."""
        with self._transaction() as db:
            db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)", _values(record))

    def get_file(self, file_id: str, owner: str) -> FileRecord | None:
        """The file ``file_id`` if ``owner`` owns it."""
        rows = self._query("SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner))
        return FileRecord(**dict(rows[0])) if rows else None

    def list_files(
        self,
        owner: str,
        purpose: str | None,
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
    ) -> tuple[list[FileRecord], bool]:
        """One page of ``owner``'s files by upload order, and whether more follow."""
        rows = self._page("files", owner, after, limit, order, ("purpose", purpose))
        return [FileRecord(**dict(r)) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str) -> None:
        """Forget a file (its body is removed by the caller)."""
        with self._transaction() as db:
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def batch_using(self, file_id: str) -> str | None:
        """An unfinished batch reading ``file_id``, if any."""
        marks = ",".join("?" * len(ACTIVE))
        rows = self._query(
            f"SELECT id FROM batches WHERE input_file_id = ? AND status IN ({marks})",
            (file_id, *ACTIVE),
        )
        return str(rows[0]["id"]) if rows else None

    # -- batches ---------------------------------------------------------------------------------

    def create_batch(self, record: BatchRecord, lines: Sequence[LineRecord]) -> None:
        """Record a batch and all its lines in one transaction."""
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO batches VALUES ({','.join('?' * len(fields(BatchRecord)))})",
                _values(record),
            )
            db.executemany(
                "INSERT INTO lines (batch_id, line_no, offset, length, custom_id, state, result) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (record.id, ln.line_no, ln.offset, ln.length, ln.custom_id, ln.state, ln.result)
                    for ln in lines
                ],
            )

    def get_batch(self, batch_id: str, owner: str | None = None) -> BatchRecord | None:
        """The batch ``batch_id`` (only if ``owner`` owns it, when given)."""
        sql, args = "SELECT * FROM batches WHERE id = ?", [batch_id]
        if owner is not None:
            sql, args = sql + " AND owner = ?", [batch_id, owner]
        rows = self._query(sql, args)
        return BatchRecord(**dict(rows[0])) if rows else None

    def list_batches(
        self, owner: str, after: str | None, limit: int
    ) -> tuple[list[BatchRecord], bool]:
        """One page of ``owner``'s batches, newest first, and whether more follow."""
        rows = self._page("batches", owner, after, limit, "desc", None)
        return [BatchRecord(**dict(r)) for r in rows[:limit]], len(rows) > limit

    def update_batch(self, batch_id: str, only_if: Sequence[str] = (), **values: Any) -> bool:
        """Set columns of a batch (only while its status is in ``only_if``, when given)."""
        sets = ", ".join(f"{name} = ?" for name in values)
        sql, args = f"UPDATE batches SET {sets} WHERE id = ?", [*values.values(), batch_id]
        if only_if:
            sql += f" AND status IN ({','.join('?' * len(only_if))})"
            args += list(only_if)
        with self._transaction() as db:
            return db.execute(sql, args).rowcount > 0

    def close_batch(self, record: BatchRecord, files: Sequence[FileRecord]) -> None:
        """Record a batch's output files and its final row in one transaction (repeatable)."""
        names = [f.name for f in fields(BatchRecord) if f.name != "id"]
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                [_values(f) for f in files],
            )
            db.execute(
                f"UPDATE batches SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?",
                [*(getattr(record, n) for n in names), record.id],
            )

    def active_batches(self) -> list[str]:
        """Batches with work left, oldest first."""
        marks = ",".join("?" * len(ACTIVE))
        rows = self._query(
            f"SELECT id FROM batches WHERE status IN ({marks}) ORDER BY rowid", ACTIVE
        )
        return [str(r["id"]) for r in rows]

    # -- lines -----------------------------------------------------------------------------------

    def pending_lines(self, batch_id: str) -> list[LineRecord]:
        """The lines of a batch that have no result yet, in file order."""
        rows = self._query(
            "SELECT line_no, offset, length, custom_id FROM lines "
            "WHERE batch_id = ? AND state = 'pending' ORDER BY line_no",
            (batch_id,),
        )
        return [LineRecord(**dict(r)) for r in rows]

    def finish_line(
        self,
        batch_id: str,
        line_no: int,
        state: LineState,
        result: dict[str, Any],
        tokens: tuple[int, int] = (0, 0),
    ) -> bool:
        """Store a line's result and finish it, once: False when it was already finished."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE lines SET state = ?, result = ?, prompt_tokens = ?, completion_tokens = ? "
                "WHERE batch_id = ? AND line_no = ? AND state = 'pending'",
                (state, json.dumps(result), *tokens, batch_id, line_no),
            )
            return cursor.rowcount > 0

    def counts(self, batch_id: str) -> Counts:
        """``request_counts`` and token sums, from the lines themselves."""
        rows = self._query(
            "SELECT COUNT(*) AS total, "
            "COALESCE(SUM(state = 'done'), 0) AS completed, "
            "COALESCE(SUM(state = 'failed'), 0) AS failed, "
            "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
            "COALESCE(SUM(completion_tokens), 0) AS completion_tokens "
            "FROM lines WHERE batch_id = ?",
            (batch_id,),
        )
        return Counts(**dict(rows[0]))

    def results(self, batch_id: str, state: LineState) -> Iterator[str]:
        """The stored result lines in ``state``, in input order (read in pages)."""
        last = -1
        while True:
            rows = self._query(
                "SELECT line_no, result FROM lines WHERE batch_id = ? AND state = ? "
                "AND line_no > ? ORDER BY line_no LIMIT 1000",
                (batch_id, state, last),
            )
            if not rows:
                return
            for row in rows:
                yield str(row["result"])
            last = int(rows[-1]["line_no"])

    # -- helpers ---------------------------------------------------------------------------------

    def _page(
        self,
        table: str,
        owner: str,
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
        match: tuple[str, str | None] | None,
    ) -> list[sqlite3.Row]:
        """``limit + 1`` rows of ``owner`` in insertion order, past the row ``after``."""
        where, args = ["owner = ?"], [owner]
        if match is not None and match[1] is not None:
            where.append(f"{match[0]} = ?")
            args.append(match[1])
        if after is not None:
            compare = "<" if order == "desc" else ">"
            where.append(f"rowid {compare} (SELECT rowid FROM {table} WHERE id = ?)")
            args.append(after)
        sql = (
            f"SELECT * FROM {table} WHERE {' AND '.join(where)} "
            f"ORDER BY rowid {order.upper()} LIMIT ?"
        )
        return self._query(sql, [*args, limit + 1])


def _values(record: FileRecord | BatchRecord) -> tuple[Any, ...]:
    return tuple(getattr(record, f.name) for f in fields(record))
