"""PNG plots of a benchmark: throughput and latency percentiles against the load level."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from vlmserve.bench.stats import LevelSummary

logger = logging.getLogger(__name__)

_THROUGHPUT = (
    ("requests_per_second", "requests/s"),
    ("images_per_second", "images/s"),
    ("output_tokens_per_second", "output tokens/s"),
)
_LATENCY = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "end-to-end"))
_STATS = (("p50", "-"), ("p90", "--"), ("p99", ":"))


def _by_target(summaries: Sequence[LevelSummary]) -> dict[str, list[LevelSummary]]:
    grouped: dict[str, list[LevelSummary]] = {}
    for summary in summaries:
        grouped.setdefault(summary.target, []).append(summary)
    return grouped


def _x_label(summaries: Sequence[LevelSummary]) -> str:
    return "concurrency" if summaries[0].level_kind == "concurrency" else "request rate (req/s)"


def _set_x(axis: object, levels: list[float]) -> None:
    """Log scale for wide sweeps such as 1,4,16,64, with the levels themselves as tick labels."""
    if len(levels) > 2 and min(levels) > 0 and max(levels) / min(levels) >= 8:
        axis.set_xscale("log", base=2)  # type: ignore[attr-defined]
    axis.set_xticks(levels, [f"{v:g}" for v in levels])  # type: ignore[attr-defined]


def plot_throughput(summaries: Sequence[LevelSummary], path: Path, names: dict[str, str]) -> None:
    """Requests/s, images/s and output tokens/s against the level, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(_THROUGHPUT), figsize=(5 * len(_THROUGHPUT), 4))
    for axis, (attribute, title) in zip(axes, _THROUGHPUT, strict=True):
        for target, rows in _by_target(summaries).items():
            levels = [r.level for r in rows]
            axis.plot(levels, [getattr(r, attribute) for r in rows], "o-", label=names[target])
            _set_x(axis, levels)
        axis.set_title(title)
        axis.set_xlabel(_x_label(summaries))
        axis.grid(True, alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", path)


def plot_latency(summaries: Sequence[LevelSummary], path: Path, names: dict[str, str]) -> None:
    """p50/p90/p99 of TTFT, TPOT, ITL and end-to-end latency (ms) against the level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(_LATENCY), figsize=(5 * len(_LATENCY), 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (attribute, title) in zip(axes, _LATENCY, strict=True):
        for index, (target, rows) in enumerate(_by_target(summaries).items()):
            levels = [r.level for r in rows]
            for stat, style in _STATS:
                values = [getattr(getattr(r, attribute), stat) for r in rows]
                ms = [float("nan") if v is None else v * 1000 for v in values]
                axis.plot(
                    levels,
                    ms,
                    style,
                    marker="o",
                    color=colours[index % len(colours)],
                    label=f"{names[target]} {stat}",
                )
            _set_x(axis, levels)
        axis.set_title(f"{title} (ms)")
        axis.set_xlabel(_x_label(summaries))
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", path)
