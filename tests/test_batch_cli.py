"""``vlmserve batch``: a Batch API file run offline on the real engine, then resumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, image_data_url


def _line(custom_id: str) -> str:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": image_data_url(40, 30)}},
    ]
    body = {"model": "llava", "max_tokens": 2, "messages": [{"role": "user", "content": content}]}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line)


def _run(model: Path, source: Path, output: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vlmserve.cli.main", "batch", str(source), "-o", str(output)]
    command += ["--model", str(model), "--served-model-name", "llava", "--engine", "transformers"]
    command += ["--concurrency", "2", "--gpu-price", "2.0"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


@pytest.mark.slow
def test_batch_command_runs_resumes_and_reports(tiny_model: Any, tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = [f"c{i}" for i in range(6)]
    source.write_text("\n".join([*map(_line, good), "{torn", _line("c1")]) + "\n")
    first = _run(tiny_model("llava"), source, output)
    assert first.returncode == 0, first.stderr
    assert "line/s" in first.stderr and "images/s" in first.stderr  # the progress bar
    assert "6 lines (0 failed)" in first.stdout and "cost per 1K images at $2.00/h" in first.stdout
    lines = _lines(output)
    assert len(lines) == 8
    # Cut the file after four results and half of the fifth, as a kill mid-write leaves it.
    raw = output.read_bytes().splitlines(keepends=True)
    output.write_bytes(b"".join(raw[:4]) + raw[4][:40])
    second = _run(tiny_model("llava"), source, output)
    assert second.returncode == 0, second.stderr
    assert "resuming: " in second.stderr
    resumed = _lines(output)
    assert resumed[:4] == lines[:4]  # kept as they were, not run again
    ok = [line["custom_id"] for line in resumed if line["error"] is None]
    assert sorted(ok) == good
    failed = [line for line in resumed if line["error"] is not None]
    assert sorted(str(line["custom_id"]) for line in failed) == ["None", "c1"]
    assert all(line["response"]["status_code"] == 200 for line in resumed if line["response"])
