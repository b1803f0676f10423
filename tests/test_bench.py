"""``vlmserve bench`` end to end: the real CLI against the real server with a tiny LLaVA.

No timing is asserted: only that the run completes, writes its files and that its counts add up.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import REPO, ServerProcess

LEVELS = (1, 2)
REQUESTS_PER_LEVEL = 4
IMAGES_PER_REQUEST = 2
OUTPUT_TOKENS = 6


def _bench(args: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vlmserve.cli.main", "bench", *args, "--out", str(out)]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("family_server", ["llava"], indirect=True)
def test_bench_side_by_side_writes_reports_whose_counts_add_up(
    family_server: tuple[str, ServerProcess], tmp_path: Path
) -> None:
    _, server = family_server
    out = tmp_path / "report"
    result = _bench(
        [
            "--base-url", server.base_url,
            "--compare", server.base_url,
            "--concurrency", ",".join(str(c) for c in LEVELS),
            "--num-requests", str(REQUESTS_PER_LEVEL),
            "--warmup", "1",
            "--rounds", "3",
            "--images-per-request", str(IMAGES_PER_REQUEST),
            "--image-size", "336x336,640x480",
            "--image-format", "png",
            "--output-tokens", str(OUTPUT_TOKENS),
            "--gpu-price", "1.0",
            "--no-progress",
        ],
        out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("bench.json", "summary.md", "throughput.png", "latency.png"):
        assert (out / name).stat().st_size > 0
    for name in ("throughput.png", "latency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    document = json.loads((out / "bench.json").read_text())
    assert document["metadata"]["output_length_enforced"] == {"A": True, "B": True}
    assert document["metadata"]["targets"][0]["model"] == server.model
    assert document["metadata"]["load"]["interleaving"].startswith("3 batches per level")
    summaries = document["summary"]
    assert [(s["target"], s["level"]) for s in summaries] == [
        (target, level) for target in "AB" for level in LEVELS
    ]
    for s in summaries:
        assert s["sent"] == REQUESTS_PER_LEVEL
        assert s["sent"] == s["completed"] + sum(s["errors"].values())
        assert s["completed"] == REQUESTS_PER_LEVEL, s["errors"]
        assert s["images"] == s["completed"] * IMAGES_PER_REQUEST
        assert s["output_tokens"] == s["completed"] * OUTPUT_TOKENS
        assert s["tokens_from_usage"] is True
        assert s["ttft"]["count"] == s["e2el"]["count"] == s["completed"]
        # A token that decodes to no text yet (part of a character) arrives in a later chunk.
        assert 0 < s["itl"]["count"] <= s["completed"] * (OUTPUT_TOKENS - 1)
        assert s["cost_per_1k_images"] is not None
    records = document["records"]
    assert len(records) == sum(s["sent"] for s in summaries)
    assert all(r["images"] == IMAGES_PER_REQUEST and r["error"] is None for r in records)
    # Every request carries two 576-token LLaVA images, so the prompt holds at least 1,152 tokens.
    assert all(r["prompt_tokens"] >= IMAGES_PER_REQUEST * 576 for r in records)
    assert [row["level"] for row in document["ratios"]] == [f"c={c}" for c in LEVELS]
    # Three rounds: each level's rate batch by batch, and the paired A/B ratio over them.
    assert all(len(s["batch_requests_per_second"]) == 3 for s in summaries)
    assert all(row["paired_req_per_s"]["batches"] == 3 for row in document["ratios"])

    markdown = (out / "summary.md").read_text()
    for heading in ("## Throughput", "## Latency", "## A/B ratios"):
        assert heading in markdown
    assert "Throughput" in result.stdout and "A/B ratios" in result.stdout


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A valid small PNG whose header is rewritten to claim ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    # IHDR is the first chunk: length (4) and type (4) at byte 8, then width and height.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("family_server", ["llava"], indirect=True)
def test_bench_counts_rejected_requests_as_errors(
    family_server: tuple[str, ServerProcess], tmp_path: Path
) -> None:
    _, server = family_server
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (336, 336), "teal").save(images / "a_good.png")
    # 8000 x 8000 is over the server's default pixel limit, so it answers 400 before decoding.
    _png_claiming(images / "b_too_many_pixels.png", 8000, 8000)
    out = tmp_path / "report"
    result = _bench(
        [
            "--base-url", server.base_url,
            "--image-dir", str(images),
            "--concurrency", "1",
            "--num-requests", "4",
            "--warmup", "1",
            "--output-tokens", str(OUTPUT_TOKENS),
            "--no-progress",
        ],
        out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The warm-up took the good image; measured requests alternate bad, good, bad, good.
    (summary,) = json.loads((out / "bench.json").read_text())["summary"]
    assert summary["sent"] == 4
    assert summary["completed"] == 2
    assert summary["errors"] == {"http_400": 2}
    assert summary["sent"] == summary["completed"] + sum(summary["errors"].values())
    assert summary["images"] == 2
    assert "http_400: 2" in (out / "summary.md").read_text()


@pytest.mark.parametrize("family_server", ["llava"], indirect=True)
def test_bench_stops_when_the_warm_up_fails(
    family_server: tuple[str, ServerProcess], tmp_path: Path
) -> None:
    _, server = family_server
    result = _bench(
        [
            "--base-url", server.base_url,
            "--model", "no-such-model",
            "--concurrency", "1",
            "--num-requests", "2",
            "--no-progress",
        ],
        tmp_path / "report",
    )  # fmt: skip
    assert result.returncode == 1
    assert "warm-up request failed (http_404)" in result.stderr
    assert not (tmp_path / "report").exists()
