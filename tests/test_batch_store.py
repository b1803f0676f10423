"""The Batch API's store, input parsing and file area, without a model or a server."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from starlette.datastructures import UploadFile

from vlmserve.api.errors import BadRequestError
from vlmserve.batch.files import FileArea
from vlmserve.batch.lines import parse_file
from vlmserve.batch.service import owner_of
from vlmserve.batch.store import BatchRecord, BatchStore, FileRecord, LineRecord

CHAT = "/v1/chat/completions"


def _batch(batch_id: str, owner: str = "anonymous", total: int = 3) -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        owner=owner,
        endpoint=CHAT,
        input_file_id="file-in",
        completion_window="24h",
        status="in_progress",
        metadata=None,
        model="m",
        total=total,
        created_at=100,
        expires_at=100 + 86400,
        in_progress_at=100,
    )


def _lines(n: int) -> list[LineRecord]:
    return [LineRecord(i, i * 10, 10, f"c{i}") for i in range(n)]


def test_a_line_is_finished_once_and_counted(tmp_path: Path) -> None:
    store = BatchStore(tmp_path / "b.db")
    store.create_batch(_batch("batch_1"), [*_lines(3), LineRecord(3, 30, 5, None, "failed", "{}")])
    assert [ln.line_no for ln in store.pending_lines("batch_1")] == [0, 1, 2]
    assert store.finish_line("batch_1", 1, "done", {"custom_id": "c1"}, (7, 2))
    assert not store.finish_line("batch_1", 1, "failed", {"custom_id": "again"})
    assert store.finish_line("batch_1", 0, "failed", {"custom_id": "c0"})
    counts = store.counts("batch_1")
    assert (counts.total, counts.completed, counts.failed) == (4, 1, 2)
    assert (counts.prompt_tokens, counts.completion_tokens) == (7, 2)
    assert [ln.line_no for ln in store.pending_lines("batch_1")] == [2]
    assert [json.loads(r)["custom_id"] for r in store.results("batch_1", "done")] == ["c1"]
    assert len(list(store.results("batch_1", "failed"))) == 2


def test_state_survives_a_new_connection(tmp_path: Path) -> None:
    first = BatchStore(tmp_path / "b.db")
    first.create_batch(_batch("batch_1"), _lines(3))
    first.finish_line("batch_1", 2, "done", {"custom_id": "c2"})
    first.close()
    second = BatchStore(tmp_path / "b.db")
    assert second.active_batches() == ["batch_1"]
    assert [ln.custom_id for ln in second.pending_lines("batch_1")] == ["c0", "c1"]


def test_committed_lines_survive_sigkill(tmp_path: Path) -> None:
    """A process killed with SIGKILL right after its commits loses none of them."""
    db = tmp_path / "b.db"
    BatchStore(db).create_batch(_batch("batch_1", total=50), _lines(50))
    child = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from vlmserve.batch.store import BatchStore
        store = BatchStore(Path({str(db)!r}))
        for i in range(0, 50, 2):
            store.finish_line("batch_1", i, "done", {{"custom_id": f"c{{i}}"}})
        print("committed", flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "committed"
    finally:
        process.kill()
        process.wait()
    store = BatchStore(db)
    assert store.counts("batch_1").completed == 25
    assert [ln.line_no for ln in store.pending_lines("batch_1")] == list(range(1, 50, 2))


def test_close_batch_is_repeatable(tmp_path: Path) -> None:
    """Finalizing again after a crash mid-finalize replaces, never duplicates, output files."""
    store = BatchStore(tmp_path / "b.db")
    store.create_batch(_batch("batch_1"), _lines(1))
    out = FileRecord("file-1-output", "anonymous", "batch_output", "o.jsonl", 10, 200)
    closed = _batch("batch_1")
    closed.status, closed.completed_at, closed.output_file_id = "completed", 200, out.id
    store.close_batch(closed, [out])
    store.close_batch(closed, [out])
    files, more = store.list_files("anonymous", None, None, 10, "desc")
    assert [f.id for f in files] == ["file-1-output"] and not more
    record = store.get_batch("batch_1")
    assert record is not None and record.status == "completed" and store.active_batches() == []


def test_owners_see_only_their_own_and_pages_follow_after(tmp_path: Path) -> None:
    store = BatchStore(tmp_path / "b.db")
    for i in range(5):
        store.create_batch(_batch(f"batch_{i}", owner="alice"), _lines(1))
    store.create_batch(_batch("batch_bob", owner="bob"), _lines(1))
    page, more = store.list_batches("alice", None, 2)
    assert [b.id for b in page] == ["batch_4", "batch_3"] and more
    page, more = store.list_batches("alice", "batch_3", 10)
    assert [b.id for b in page] == ["batch_2", "batch_1", "batch_0"] and not more
    assert store.get_batch("batch_bob", "alice") is None
    assert store.get_batch("batch_bob", "bob") is not None


def test_update_batch_only_from_the_given_statuses(tmp_path: Path) -> None:
    store = BatchStore(tmp_path / "b.db")
    store.create_batch(_batch("batch_1"), _lines(1))
    assert store.update_batch("batch_1", only_if=("in_progress",), status="cancelling")
    assert not store.update_batch("batch_1", only_if=("in_progress",), status="cancelling")
    assert store.batch_using("file-in") == "batch_1"


def test_owner_ids_do_not_depend_on_key_order() -> None:
    assert owner_of("sk-a") == owner_of("sk-a") != owner_of("sk-b")
    assert "sk-a" not in owner_of("sk-a")
    assert owner_of(None) == "anonymous"


def _line(custom_id: str, url: str = CHAT) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": {"a": 1}})


def test_bad_lines_fail_alone(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    rows = [
        _line("a"),
        "{not json",
        "",
        _line("a"),
        _line("b", "/v1/embeddings"),
        "[1]",
        _line("c"),
        _line("x" * 1000),
    ]
    path.write_text("\n".join(rows) + "\n")
    parsed = parse_file(path, CHAT, 100, 1000)
    assert [p.custom_id for p in parsed] == ["a", None, "a", "b", None, "c", None]
    errors = [p.error for p in parsed]
    assert errors[0] is None and errors[5] is None
    assert "not JSON" in str(errors[1]) and "duplicate" in str(errors[2])
    assert "/v1/embeddings" in str(errors[3]) and "not JSON" in str(errors[4])
    assert "request body limit of 1000 bytes" in str(errors[6])
    raw = path.read_bytes()
    assert (
        json.loads(raw[parsed[5].offset : parsed[5].offset + parsed[5].length])["custom_id"] == "c"
    )


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "empty_file"),
        ("\n\n", "empty_file"),
        ("id,prompt\n1,hello\n", "invalid_file_format"),
        ("\n".join(_line(f"c{i}") for i in range(4)), "too_many_requests_in_file"),
    ],
)
def test_unusable_files_are_refused_whole(tmp_path: Path, text: str, code: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    with pytest.raises(BadRequestError) as caught:
        parse_file(path, CHAT, 3, 1000)
    assert caught.value.code == code and caught.value.param == "input_file_id"


def test_an_upload_over_the_limit_leaves_nothing(tmp_path: Path) -> None:
    area = FileArea(tmp_path / "files")
    ok = UploadFile(io.BytesIO(b"x" * 100))
    assert asyncio.run(area.save("file-ok", ok, 100)) == 100
    with pytest.raises(BadRequestError) as caught:
        asyncio.run(area.save("file-big", UploadFile(io.BytesIO(b"x" * 101)), 100))
    assert caught.value.code == "file_too_large"
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["file-ok"]
