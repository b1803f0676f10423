"""``vlmserve batch INPUT.jsonl -o OUTPUT.jsonl``: a Batch API input file, run offline.

The same lines, checks and output format as ``POST /v1/batches``, run on the engine in this
process (no HTTP), with a progress bar. Results go to OUTPUT as they finish, successes and
failures alike (a failure has ``error`` set or a ``response.status_code`` other than 200), so a
run that stops part-way resumes: lines whose ``custom_id`` is already in OUTPUT are skipped.
Lines that are invalid as lines (not JSON, duplicate ``custom_id``) are written once, at the
start of a fresh OUTPUT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from vlmserve.api.chat import ChatHandler
    from vlmserve.batch.lines import ParsedLine
    from vlmserve.config import Settings
    from vlmserve.engine.base import Engine

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Input, output, model and load options."""
    parser.add_argument("input", type=Path, metavar="INPUT.jsonl", help="Batch API input file.")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, metavar="OUTPUT.jsonl", help="Results file."
    )
    parser.add_argument(
        "--model", help="Model folder, catalogue name or repo id (default: the demo model)."
    )
    parser.add_argument("--served-model-name", help="The model id lines must name.")
    parser.add_argument("--engine", choices=["auto", "transformers", "vllm"], default=None)
    parser.add_argument(
        "--endpoint", default="/v1/chat/completions", help="The url every line must carry."
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="Lines in flight at once (default 8)."
    )
    parser.add_argument("--gpu-price", type=float, metavar="USD_PER_HOUR", help="For the cost.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar.")


@dataclass
class _Tally:
    """What the run has done so far."""

    lines: int = 0
    failed: int = 0
    images: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def finished_ids(output: Path) -> set[str]:
    """``custom_id``s that already ran in OUTPUT; a torn last line (a kill mid-write) is cut off."""
    if not output.exists():
        return set()
    data = output.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with output.open("r+b") as handle:
            handle.truncate(len(whole))
    ids = set()
    for raw in whole.splitlines():
        line = json.loads(raw) if raw.strip() else {}
        # Lines that ran have a response; an invalid line's custom_id (a duplicate) says nothing.
        if line.get("response") is not None:
            ids.add(line["custom_id"])
    return ids


def run(args: argparse.Namespace) -> int:
    """Load the engine, run every line not yet in OUTPUT, print the summary."""
    from vlmserve.api.errors import BadRequestError
    from vlmserve.batch.lines import parse_file
    from vlmserve.cli.serve import plan_engine_args, resolve
    from vlmserve.config import Settings
    from vlmserve.engine.factory import EngineUnavailableError, build_engine, choose_engine
    from vlmserve.logs import configure_logging

    given = {"model": args.model, "engine": args.engine}
    given["served_model_name"] = args.served_model_name
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    configure_logging("warning", settings.json_logs)
    if args.concurrency < 1:
        print("vlmserve batch: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        body_limit = settings.request_body_limit()
        parsed = parse_file(args.input, args.endpoint, sys.maxsize, body_limit)
        model_path, model_id, catalog = resolve(settings)
        name, _ = choose_engine(settings)
        plan_args = plan_engine_args(settings, catalog) if name == "vllm" else None
        engine = build_engine(name, settings, model_path, plan_args)
    except BadRequestError as exc:
        print(f"vlmserve batch: {args.input}: {exc.message}", file=sys.stderr)
        return 2
    except (OSError, EngineUnavailableError, ValueError) as exc:
        print(f"vlmserve batch: {exc}", file=sys.stderr)
        return 2
    tally = asyncio.run(_run_all(args, settings, engine, model_id, parsed))
    _summary(tally, args.gpu_price)
    return 0


async def _run_all(
    args: argparse.Namespace,
    settings: Settings,
    engine: Engine,
    model_id: str,
    parsed: list[ParsedLine],
) -> _Tally:
    from vlmserve.api.chat import ChatHandler
    from vlmserve.api.metrics import Metrics

    done = finished_ids(args.output)
    fresh = not args.output.exists() or args.output.stat().st_size == 0
    todo = [p for p in parsed if p.error is None and p.custom_id not in done]
    if done:
        print(f"resuming: {len(done)} lines already in {args.output}", file=sys.stderr)
    await engine.start()
    handler = ChatHandler(engine, settings, model_id, Metrics(lambda: None))
    # The image workers start before the clock does, as the server starts them before it is ready.
    await asyncio.gather(*map(asyncio.wrap_future, handler.reader.images.start()))
    try:
        with args.output.open("a", encoding="utf-8") as out:
            if fresh:
                _write_invalid(out, parsed)
            tally = _Tally()
            await _run_lines(handler, args, todo, out, tally, settings.request_timeout_seconds)
    finally:
        handler.reader.images.close()
        await engine.shutdown()
    return tally


def _write_invalid(out: IO[str], parsed: list[ParsedLine]) -> None:
    from vlmserve.batch.lines import invalid_line

    for p in parsed:
        if p.error is not None:
            out.write(json.dumps(invalid_line(p.custom_id, f"line {p.line_no + 1}: {p.error}")))
            out.write("\n")
    out.flush()


async def _run_lines(
    handler: ChatHandler,
    args: argparse.Namespace,
    todo: list[ParsedLine],
    out: IO[str],
    tally: _Tally,
    timeout: float,
) -> None:
    from tqdm import tqdm

    from vlmserve.batch.lines import read_line, run_line

    queue = list(reversed(todo))
    bar = tqdm(total=len(todo), unit="line", disable=args.no_progress, dynamic_ncols=True)

    async def worker() -> None:
        while queue:
            line = queue.pop()
            item = read_line(args.input, line.offset, line.length)
            result = await run_line(handler, str(line.custom_id), item["body"], timeout)
            out.write(json.dumps(result.line) + "\n")
            out.flush()
            tally.lines += 1
            tally.failed += not result.ok
            tally.images += result.images
            tally.completion_tokens += result.completion_tokens
            bar.set_postfix_str(f"{tally.images / tally.elapsed:.1f} images/s", refresh=False)
            bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    finally:
        bar.close()


def _summary(tally: _Tally, gpu_price: float | None) -> None:
    from vlmserve.bench.stats import cost_per_unit

    wall = tally.elapsed
    print(
        f"{tally.lines} lines ({tally.failed} failed) in {wall:.1f} s: "
        f"{tally.lines / wall:.2f} lines/s, {tally.images / wall:.2f} images/s, "
        f"{tally.completion_tokens / wall:.1f} output tok/s"
    )
    if gpu_price is not None:
        cost = cost_per_unit(gpu_price, wall, tally.images, 1000)
        shown = "n/a (no images)" if cost is None else f"${cost:.4f}"
        print(f"cost per 1K images at ${gpu_price:.2f}/h: {shown}")
