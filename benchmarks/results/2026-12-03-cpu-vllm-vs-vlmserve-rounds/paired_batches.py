"""The by-batch A/B ratio of a bench.json written before `vlmserve bench` reported it itself:
each level's records cut back into their ``--rounds`` batches (in run order, sized by
``runner.split``), each batch's completed requests over its first-send-to-last-answer
time, then :class:`vlmserve.bench.stats.PairedRatio`.

    .venv/bin/python benchmarks/results/2026-12-03-cpu-vllm-vs-vlmserve-rounds/paired_batches.py \\
        /tmp/cpu-vllm-sweep/vlmserve-vs-vllm/bench.json 16
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from vlmserve.bench.runner import LoadPlan, split
from vlmserve.bench.stats import PairedRatio


def batch_rates(records: list[dict[str, object]], rounds: int) -> list[float]:
    """Requests/s of each batch of one level's records."""
    plan = LoadPlan(levels=[], num_requests=len(records), duration=None)
    rates, start = [], 0
    for batch in split(plan, rounds):
        part = records[start : start + (batch.num_requests or 0)]
        start += len(part)
        ok = [r for r in part if r["error"] is None]
        wall = max(float(r["start"]) + float(r["e2el"]) for r in ok)  # type: ignore[arg-type]
        rates.append(len(ok) / wall)
    return rates


def main() -> None:
    document = json.loads(Path(sys.argv[1]).read_text())
    rounds = int(sys.argv[2])
    # Records are written level by level, A's then B's, each level's batches in run order.
    groups = [list(g) for _, g in itertools.groupby(document["records"], lambda r: r["target"])]
    levels = [s["level"] for s in document["summary"] if s["target"] == "A"]
    for level, a, b in zip(levels, groups[0::2], groups[1::2], strict=True):
        paired = PairedRatio.of(batch_rates(a, rounds), batch_rates(b, rounds))
        assert paired is not None
        print(f"c={level:g}: {paired.mean:.3f} ({paired.low:.3f}-{paired.high:.3f}, {rounds})")


if __name__ == "__main__":
    main()
