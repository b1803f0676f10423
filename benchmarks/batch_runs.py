"""Batch API measurements: input files from bench's workload; interactive TTFT under a batch.

``input``: write N Batch API lines carrying exactly the requests ``vlmserve bench`` sends (same
synthetic images, prompt and exact output length), so ``vlmserve batch`` and ``vlmserve bench``
can be compared at the same concurrency.

``ttft``: against a running server, alternate ``vlmserve bench`` runs without and with a batch
running (uploaded with the openai SDK), ROUNDS times, and print interactive TTFT p50 for each,
plus the batch's progress while the interactive load ran.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vlmserve.bench.cli import DEFAULT_PROMPT
from vlmserve.bench.workload import Workload, synthetic_pool

CHAT = "/v1/chat/completions"


def write_input(path: Path, lines: int, model: str, output_tokens: int, size: str) -> None:
    """``lines`` Batch API lines with bench's default workload bodies (not streamed)."""
    width, height = (int(v) for v in size.split("x"))
    images = synthetic_pool([(width, height)], "jpeg", 64, 0)
    workload = Workload(images, 1, DEFAULT_PROMPT, output_tokens)
    with path.open("w") as out:
        for i in range(lines):
            body = workload.body(model, i, enforce_length=True)
            del body["stream"], body["stream_options"]
            line = {"custom_id": f"req-{i}", "method": "POST", "url": CHAT, "body": body}
            out.write(json.dumps(line) + "\n")


def bench_ttft(base_url: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """One ``vlmserve bench`` level; its summary (TTFT distribution, throughput)."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "vlmserve.cli.main", "bench", "--base-url", base_url,
            "--model", model, "--concurrency", str(args.concurrency),
            "--num-requests", str(args.requests), "--output-tokens", str(args.output_tokens),
            "--image-size", args.image_size, "--warmup", "1", "--no-progress", "--out", out,
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
        summary: dict[str, Any] = json.loads((Path(out) / "bench.json").read_text())["summary"][0]
        return summary


def measure_ttft(args: argparse.Namespace) -> None:
    """Alternate unloaded and batch-loaded interactive runs; print a Markdown table."""
    import openai

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key or "none")
    upload = client.files.create(file=args.input.open("rb"), purpose="batch")
    print("| round | batch running | TTFT p50 (ms) | TTFT p90 (ms) | req/s | batch lines |")
    print("|---|---|---|---|---|---|")
    for round_no in range(1, args.rounds + 1):
        alone = bench_ttft(args.base_url, args.model, args)
        _row(round_no, "no", alone, "")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
        )
        time.sleep(2)  # let the batch fill its in-flight lines
        start = client.batches.retrieve(batch.id).request_counts
        began = time.monotonic()
        loaded = bench_ttft(args.base_url, args.model, args)
        window = time.monotonic() - began
        end = client.batches.retrieve(batch.id)
        assert start is not None and end.request_counts is not None
        if end.status != "in_progress":
            print(f"note: the batch ended ({end.status}) before the interactive run did")
        done = end.request_counts.completed - start.completed
        # The window includes bench's start-up and warm-up, not only its measured requests.
        _row(round_no, "yes", loaded, f"{done} in {window:.0f} s ({done / window:.2f}/s)")
        client.batches.cancel(batch.id)
        while client.batches.retrieve(batch.id).status != "cancelled":
            time.sleep(0.5)


def _row(round_no: int, running: str, summary: dict[str, Any], done: str) -> None:
    ttft = summary["ttft"]
    print(
        f"| {round_no} | {running} | {ttft['p50'] * 1000:.0f} | {ttft['p90'] * 1000:.0f} "
        f"| {summary['requests_per_second']:.2f} | {done} |",
        flush=True,
    )


def main() -> None:
    """``input`` or ``ttft``."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("input", help="Write a batch input file from bench's workload.")
    make.add_argument("path", type=Path)
    make.add_argument("--lines", type=int, default=500)
    make.add_argument("--model", required=True)
    make.add_argument("--output-tokens", type=int, default=64)
    make.add_argument("--image-size", default="336x336")
    ttft = sub.add_parser("ttft", help="Interactive TTFT without and with a batch running.")
    ttft.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ttft.add_argument("--api-key")
    ttft.add_argument("--model", required=True)
    ttft.add_argument("--input", type=Path, required=True, help="The batch to run meanwhile.")
    ttft.add_argument("--concurrency", type=int, default=1)
    ttft.add_argument("--requests", type=int, default=30)
    ttft.add_argument("--output-tokens", type=int, default=16)
    ttft.add_argument("--image-size", default="336x336")
    ttft.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.command == "input":
        write_input(args.path, args.lines, args.model, args.output_tokens, args.image_size)
    else:
        measure_ttft(args)


if __name__ == "__main__":
    main()
