"""Tables and files from benchmark summaries: console text, Markdown, raw JSON.

The console and the Markdown file show the same tables, built from the same rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vlmserve.bench.stats import Distribution, LevelSummary, PairedRatio, ratio

logger = logging.getLogger(__name__)

Row = list[str]
METRICS: tuple[tuple[str, str], ...] = (
    ("ttft", "TTFT"),
    ("tpot", "TPOT"),
    ("itl", "ITL"),
    ("e2el", "E2E latency"),
)
# (column title, summary attribute or "metric.stat")
RATIO_COLUMNS: tuple[tuple[str, str], ...] = (
    ("req/s", "requests_per_second"),
    ("img/s", "images_per_second"),
    ("out tok/s", "output_tokens_per_second"),
    ("TTFT mean", "ttft.mean"),
    ("TTFT p99", "ttft.p99"),
    ("TPOT mean", "tpot.mean"),
    ("ITL mean", "itl.mean"),
    ("E2E mean", "e2el.mean"),
    ("E2E p99", "e2el.p99"),
)


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.1f}"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{kind}: {count}" for kind, count in errors.items()) or "0"


def _level(summary: LevelSummary) -> str:
    shown = int(summary.level) if float(summary.level).is_integer() else summary.level
    return f"c={shown}" if summary.level_kind == "concurrency" else f"rate={shown}"


def throughput_table(summaries: Sequence[LevelSummary]) -> tuple[Row, list[Row]]:
    """Headers and rows of the throughput table, one row per target and level."""
    headers = ["target", "level", "sent", "ok", "errors", "wall s", "req/s", "img/s", "out tok/s"]
    with_cost = any(s.cost_per_1k_images is not None for s in summaries)
    if with_cost:
        headers += ["$/1K img", "$/1M out tok"]
    rows = []
    for s in summaries:
        row = [
            s.target,
            _level(s),
            str(s.sent),
            str(s.completed),
            _errors(s.errors),
            _num(s.wall_seconds),
            _num(s.requests_per_second, 3),
            _num(s.images_per_second, 3),
            _num(s.output_tokens_per_second, 1),
        ]
        if with_cost:
            row += [_money(s.cost_per_1k_images), _money(s.cost_per_1m_output_tokens)]
        rows.append(row)
    return headers, rows


def latency_table(summaries: Sequence[LevelSummary]) -> tuple[Row, list[Row]]:
    """Headers and rows of the latency table (ms), one row per target, level and metric."""
    headers = ["target", "level", "metric", "mean ms", "p50 ms", "p90 ms", "p99 ms", "samples"]
    rows = []
    for s in summaries:
        for attribute, title in METRICS:
            dist: Distribution = getattr(s, attribute)
            rows.append(
                [
                    s.target,
                    _level(s),
                    title,
                    _ms(dist.mean),
                    _ms(dist.p50),
                    _ms(dist.p90),
                    _ms(dist.p99),
                    str(dist.count),
                ]
            )
    return headers, rows


def _value(summary: LevelSummary, path: str) -> float | None:
    value: Any = summary
    for part in path.split("."):
        value = getattr(value, part)
    return value


def ratios(a: Sequence[LevelSummary], b: Sequence[LevelSummary]) -> list[dict[str, Any]]:
    """A/B for every ratio column, level by level (levels matched by position)."""
    out = []
    for left, right in zip(a, b, strict=True):
        values = {title: ratio(_value(left, p), _value(right, p)) for title, p in RATIO_COLUMNS}
        paired = PairedRatio.of(left.batch_requests_per_second, right.batch_requests_per_second)
        out.append(
            {
                "level": _level(left),
                "ratios": values,
                "paired_req_per_s": None if paired is None else asdict(paired),
            }
        )
    return out


def _paired(value: dict[str, Any] | None) -> str:
    if value is None:
        return "-"
    return f"{value['mean']:.3f} ({value['low']:.3f}-{value['high']:.3f}, {value['batches']})"


def ratio_table(rows: list[dict[str, Any]]) -> tuple[Row, list[Row]]:
    """Headers and rows of the A/B ratio table."""
    headers = ["level", *(title for title, _ in RATIO_COLUMNS), PAIRED_TITLE]
    body = [
        [
            row["level"],
            *(_num(row["ratios"][title], 3) for title, _ in RATIO_COLUMNS),
            _paired(row["paired_req_per_s"]),
        ]
        for row in rows
    ]
    return headers, body


def text_table(headers: Row, rows: list[Row]) -> str:
    """A plain aligned table for the console."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def markdown_table(headers: Row, rows: list[Row]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


PAIRED_TITLE = "req/s by batch (95%, n)"
RATIO_NOTE = (
    "Ratios are A/B. Throughput ratios above 1 mean A is faster; latency ratios above 1 mean "
    "A is slower. By batch: the geometric mean of each --rounds batch's A/B requests/s, with its "
    "approximate 95% interval and the number of batches (from 3 batches)."
)


def _sections(
    summaries: Sequence[LevelSummary], ratio_rows: list[dict[str, Any]] | None
) -> list[tuple[str, tuple[Row, list[Row]]]]:
    sections = [
        ("Throughput", throughput_table(summaries)),
        ("Latency", latency_table(summaries)),
    ]
    if ratio_rows:
        sections.append(("A/B ratios", ratio_table(ratio_rows)))
    return sections


def console_summary(
    summaries: Sequence[LevelSummary],
    ratio_rows: list[dict[str, Any]] | None,
    notes: Sequence[str],
) -> str:
    """Every table as plain text, then the notes."""
    parts = []
    for title, (headers, rows) in _sections(summaries, ratio_rows):
        parts.append(f"{title}\n{text_table(headers, rows)}")
    if ratio_rows:
        parts.append(RATIO_NOTE)
    parts += [f"note: {note}" for note in notes]
    return "\n\n".join(parts)


def markdown_summary(
    summaries: Sequence[LevelSummary],
    ratio_rows: list[dict[str, Any]] | None,
    notes: Sequence[str],
    metadata: dict[str, Any],
) -> str:
    """The Markdown report: run facts, the same tables as the console, notes."""
    targets = metadata.get("targets", [])
    lines = ["# vlmserve bench", "", f"- date: {metadata.get('date')}"]
    lines.append(f"- command: `{metadata.get('command')}`")
    lines += [f"- {t['name']}: {t['base_url']} model `{t['model']}`" for t in targets]
    workload = metadata.get("workload", {})
    lines.append(
        f"- workload: {workload.get('images_per_request')} image(s) per request, "
        f"sizes {', '.join(workload.get('image_sizes', []))}, "
        f"{workload.get('output_tokens')} output tokens requested"
        + (f", {workload['turns']} turns per conversation" if workload.get("turns", 1) > 1 else "")
        + f" ({workload.get('source')})"
    )
    for title, (headers, rows) in _sections(summaries, ratio_rows):
        lines += ["", f"## {title}", "", markdown_table(headers, rows)]
    if ratio_rows:
        lines += ["", RATIO_NOTE]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as indented JSON."""
    path.write_text(json.dumps(document, indent=1) + "\n")
    logger.info("wrote %s", path)
