"""After the run: summaries, notes, the console table and the files under ``--out``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from vlmserve.bench.report import console_summary, markdown_summary, ratios, write_json
from vlmserve.bench.runner import BenchmarkOutcome, Target
from vlmserve.bench.stats import LevelSummary, summarize
from vlmserve.bench.workload import Workload

logger = logging.getLogger(__name__)


def summarize_outcome(outcome: BenchmarkOutcome, gpu_price: float | None) -> list[LevelSummary]:
    """One summary per level and target, A's levels first, then B's."""
    summaries = [
        summarize(
            result.records,
            target=result.target,
            level_kind=result.level.kind,
            level=result.level.value,
            wall_seconds=result.wall_seconds,
            gpu_price_per_hour=gpu_price,
            batch_rates=result.batch_rates,
        )
        for result in outcome.results
    ]
    return sorted(summaries, key=lambda s: s.target)


def collect_notes(
    outcome: BenchmarkOutcome, summaries: list[LevelSummary], workload: Workload
) -> list[str]:
    """Everything a reader must know to trust the figures: length enforcement, token counting."""
    notes = [f"{name}: {note}" for name, items in outcome.notes.items() for note in items]
    wanted = workload.output_tokens
    for s in summaries:
        if s.output_tokens_min is not None and (
            s.output_tokens_min != wanted or s.output_tokens_max != wanted
        ):
            notes.append(
                f"{s.target} {s.level_kind}={s.level:g}: output tokens per request ranged "
                f"{s.output_tokens_min}..{s.output_tokens_max}, not exactly {wanted}"
            )
        notes += [f"{s.target} {s.level_kind}={s.level:g}: {note}" for note in s.notes]
    return notes


def write_outputs(
    out: Path,
    document: dict[str, Any],
    summaries: list[LevelSummary],
    ratio_rows: list[dict[str, Any]] | None,
    notes: list[str],
) -> None:
    """bench.json, summary.md, throughput.png and latency.png under ``out``."""
    from vlmserve.bench.plots import plot_latency, plot_throughput

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", document)
    markdown = markdown_summary(summaries, ratio_rows, notes, document["metadata"])
    (out / "summary.md").write_text(markdown)
    names = {t["name"]: f"{t['name']} ({t['model']})" for t in document["metadata"]["targets"]}
    plot_throughput(summaries, out / "throughput.png", names)
    plot_latency(summaries, out / "latency.png", names)


def finish(
    outcome: BenchmarkOutcome,
    targets: list[Target],
    workload: Workload,
    args: argparse.Namespace,
    metadata: dict[str, Any],
) -> int:
    """Summarise, print the tables, write ``--out``; 1 when no measured request completed."""
    summaries = summarize_outcome(outcome, args.gpu_price)
    ratio_rows = None
    if len(targets) == 2:
        a = [s for s in summaries if s.target == "A"]
        b = [s for s in summaries if s.target == "B"]
        ratio_rows = ratios(a, b)
    notes = collect_notes(outcome, summaries, workload)
    metadata["output_length_enforced"] = outcome.length_enforced
    print(console_summary(summaries, ratio_rows, notes))
    if args.out is not None:
        document = {
            "metadata": metadata,
            "summary": [s.to_dict() for s in summaries],
            "ratios": ratio_rows,
            "notes": notes,
            "records": [r.to_dict() for result in outcome.results for r in result.records],
        }
        write_outputs(args.out, document, summaries, ratio_rows, notes)
        print(f"\nwrote {args.out}/bench.json, summary.md, throughput.png, latency.png")
    return 0 if any(s.completed for s in summaries) else 1
