"""The Batch API end to end: the real openai SDK, a real server killed mid-batch, and a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers import ServerProcess, image_data_url, start_server
from vlmserve.batch.store import BatchStore

CHAT = "/v1/chat/completions"
TOTAL = 200


def _request(custom_id: str, i: int, images: int = 1, model: str = "llava", **extra: Any) -> str:
    content: list[dict[str, Any]] = [{"type": "text", "text": f"Describe picture {i}."}]
    colors = ("teal", "orange", "navy", "olive")
    content += [
        {"type": "image_url", "image_url": {"url": image_data_url(32 + i % 7, 32, "PNG", c)}}
        for c in colors[:images]
    ]
    body = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body})


def _input_file() -> tuple[bytes, dict[int, str]]:
    """200 lines, five of them bad in different ways: line number -> the bad line's custom_id."""
    bad = {13: "", 57: "bad-url", 101: "req-5", 150: "req-150", 180: "req-180"}
    lines = []
    for i in range(TOTAL):
        if i == 13:
            lines.append('{"custom_id": "req-13", "method": "POST", ')
        elif i == 57:
            lines.append(_request("bad-url", i).replace(CHAT, "/v1/embeddings"))
        elif i == 101:
            lines.append(_request("req-5", i))
        elif i == 150:
            lines.append(_request("req-150", i, images=3))
        elif i == 180:
            lines.append(_request("req-180", i, model="gpt-4o"))
        else:
            lines.append(_request(f"req-{i}", i))
    return ("\n".join(lines) + "\n").encode(), bad


def _start(args: list[str], db: Path, log: Path) -> ServerProcess:
    return start_server(args, log, env={"VLMSERVE_BATCH_DIR": str(db)})


def _wait(client: openai.OpenAI, batch_id: str, done: Any, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} did not get there: {batch}")


def _jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


@pytest.mark.slow
def test_a_batch_survives_sigkill_and_every_line_ends_once(tiny_model: Any, tmp_path: Path) -> None:
    db = tmp_path / "batches"
    args = ["--model", str(tiny_model("llava")), "--served-model-name", "llava"]
    args += ["--engine", "transformers"]
    args += ["--max-images-per-request", "2", "--api-keys", "sk-a,sk-b"]
    server = _start(args, db, tmp_path / "first.log")
    try:
        alice = openai.OpenAI(base_url=server.base_url, api_key="sk-a")
        bob = openai.OpenAI(base_url=server.base_url, api_key="sk-b")
        data, bad = _input_file()
        upload = alice.files.create(file=("in.jsonl", data), purpose="batch")
        batch = alice.batches.create(
            input_file_id=upload.id, endpoint=CHAT, completion_window="24h", metadata={"k": "v"}
        )
        assert batch.status == "in_progress" and batch.request_counts is not None
        assert batch.request_counts.total == TOTAL and batch.metadata == {"k": "v"}
        _others_see_nothing(bob, upload.id, batch.id)
        running = _wait(
            alice, batch.id, lambda b: b.request_counts.completed >= 20 or b.status != "in_progress"
        )
        assert running.status == "in_progress", "the batch ended before the kill"
        server.process.kill()
        server.process.wait()
    finally:
        server.stop()
    stored = BatchStore(db / "batches.db")
    before = stored.counts(batch.id)
    stored.close()
    assert 0 < before.completed + before.failed < TOTAL

    args += ["--rate-limit-requests-per-minute", "2"]
    server = _start(args, db, tmp_path / "second.log")
    try:
        alice = openai.OpenAI(base_url=server.base_url, api_key="sk-a", max_retries=0)
        ended = _wait(alice, batch.id, lambda b: b.status == "completed")
        assert f"{TOTAL - before.completed - before.failed} pending lines to run" in server.log()
        _check_results(alice, ended, bad)
        _cancel_and_rate_limit(alice, openai.OpenAI(base_url=server.base_url, api_key="sk-b"))
    finally:
        server.stop()


def _others_see_nothing(bob: openai.OpenAI, file_id: str, batch_id: str) -> None:
    """Another key lists nothing and gets 404 for the first key's file and batch."""
    assert bob.files.list().data == [] and bob.batches.list().data == []
    for call in (
        lambda: bob.files.retrieve(file_id),
        lambda: bob.files.content(file_id),
        lambda: bob.files.delete(file_id),
        lambda: bob.batches.retrieve(batch_id),
        lambda: bob.batches.cancel(batch_id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()


def _check_results(client: openai.OpenAI, batch: Any, bad: dict[int, str]) -> None:
    """Every line once: good ones in the output, the five bad ones in the error file."""
    assert batch.request_counts.total == TOTAL
    assert batch.request_counts.completed == TOTAL - len(bad)
    assert batch.request_counts.failed == len(bad)
    output = _jsonl(client, batch.output_file_id)
    errors = _jsonl(client, batch.error_file_id)
    assert len(output) + len(errors) == TOTAL
    good = [f"req-{i}" for i in range(TOTAL) if i not in bad]
    assert [line["custom_id"] for line in output] == good
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["role"] == "assistant"
    by_id = {line["custom_id"]: line for line in errors}
    assert sorted(by_id, key=str) == sorted([None, *[c for c in bad.values() if c]], key=str)
    assert "not JSON" in by_id[None]["error"]["message"]
    assert "/v1/embeddings" in by_id["bad-url"]["error"]["message"]
    assert "duplicate" in by_id["req-5"]["error"]["message"]
    assert by_id["req-150"]["response"]["status_code"] == 400
    assert by_id["req-150"]["response"]["body"]["error"]["code"] == "too_many_images"
    assert by_id["req-180"]["response"]["status_code"] == 404
    assert batch.usage.output_tokens > 0 and batch.usage.input_tokens > 0


def _cancel_and_rate_limit(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
    """Cancel keeps what finished; the third upload of a minute is a 429 (limit 2 per minute)."""
    lines = "\n".join(_request(f"slow-{i}", i, max_tokens=64) for i in range(30)) + "\n"
    upload = alice.files.create(file=("slow.jsonl", lines.encode()), purpose="batch")
    batch = alice.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h")
    cancelling = alice.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    ended = _wait(alice, batch.id, lambda b: b.status == "cancelled")
    assert ended.request_counts.completed < 30 and ended.cancelled_at is not None
    assert len(_jsonl(alice, ended.output_file_id)) == ended.request_counts.completed
    with pytest.raises(openai.RateLimitError):
        alice.files.create(file=("again.jsonl", lines.encode()), purpose="batch")
    assert bob.files.create(file=("b.jsonl", lines.encode()), purpose="batch").purpose == "batch"
