"""Unit tests for the benchmark's arithmetic, workload building and SSE parsing."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmserve.bench.client import _StreamState
from vlmserve.bench.photos import PRESETS
from vlmserve.bench.records import RequestRecord
from vlmserve.bench.report import ratios, text_table
from vlmserve.bench.runner import LoadPlan, abba_order, split
from vlmserve.bench.stats import (
    Distribution,
    PairedRatio,
    cost_per_unit,
    percentile,
    ratio,
    summarize,
    tpot_of,
)
from vlmserve.bench.workload import (
    Workload,
    load_image_dir,
    parse_sizes,
    photo_images,
    synthetic_pool,
)


@pytest.mark.parametrize("q", [0, 1, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = [0.31, 0.05, 1.7, 0.9, 0.2, 0.44, 3.0, 0.12, 0.5, 0.77, 2.2]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0], 99) == 10.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_distribution_of_nothing_is_empty() -> None:
    assert Distribution.of([]) == Distribution(0, None, None, None, None)
    dist = Distribution.of([1.0, 3.0])
    assert (dist.count, dist.mean, dist.p50) == (2, 2.0, 2.0)


def test_cost_per_1k_images_and_per_1m_tokens() -> None:
    # $3.60/h for 100 s is $0.10; spread over 500 images that is $0.20 per 1K images.
    assert cost_per_unit(3.6, 100.0, 500, 1000) == pytest.approx(0.2)
    # The same $0.10 over 20,000 output tokens is $5 per 1M tokens.
    assert cost_per_unit(3.6, 100.0, 20_000, 1_000_000) == pytest.approx(5.0)
    assert cost_per_unit(3.6, 100.0, 0, 1000) is None


def test_ratio_handles_missing_and_zero() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None


def _record(
    index: int, *, ttft: float, e2el: float, tokens: int, error: str | None = None
) -> RequestRecord:
    record = RequestRecord(index=index, target="A", images=2, ttft=ttft, e2el=e2el)
    record.output_tokens = tokens
    record.tokens_from_usage = True
    record.error = error
    record.itl = [(e2el - ttft) / max(tokens - 1, 1)] * max(tokens - 1, 0)
    return record


def test_tpot_excludes_first_token() -> None:
    assert tpot_of(_record(0, ttft=0.5, e2el=1.4, tokens=10)) == pytest.approx(0.1)
    assert tpot_of(_record(0, ttft=0.5, e2el=0.5, tokens=1)) is None


def test_summary_counts_add_up() -> None:
    records = [_record(i, ttft=0.1 * (i + 1), e2el=1.0 + i, tokens=8) for i in range(4)]
    records.append(_record(4, ttft=0.0, e2el=0.0, tokens=0, error="http_503"))
    records.append(_record(5, ttft=0.0, e2el=0.0, tokens=0, error="timeout"))
    summary = summarize(
        records,
        target="A",
        level_kind="concurrency",
        level=4,
        wall_seconds=2.0,
        gpu_price_per_hour=1.8,
    )
    assert summary.sent == summary.completed + sum(summary.errors.values()) == 6
    assert summary.errors == {"http_503": 1, "timeout": 1}
    assert summary.images == 8
    assert summary.output_tokens == 32
    assert summary.requests_per_second == pytest.approx(2.0)
    assert summary.images_per_second == pytest.approx(4.0)
    assert summary.output_tokens_per_second == pytest.approx(16.0)
    assert summary.ttft.mean == pytest.approx(0.25)
    assert summary.itl.count == 4 * 7
    assert summary.cost_per_1k_images == pytest.approx(1.8 / 3600 * 2.0 / 8 * 1000)
    assert (summary.output_tokens_min, summary.output_tokens_max) == (8, 8)


def test_ratios_pair_levels() -> None:
    fast = [_record(i, ttft=0.1, e2el=1.0, tokens=8) for i in range(4)]
    slow = [_record(i, ttft=0.2, e2el=2.0, tokens=8) for i in range(4)]
    a = summarize(fast, target="A", level_kind="concurrency", level=1, wall_seconds=4.0)
    b = summarize(slow, target="B", level_kind="concurrency", level=1, wall_seconds=8.0)
    (row,) = ratios([a], [b])
    assert row["level"] == "c=1"
    assert row["ratios"]["req/s"] == pytest.approx(2.0)
    assert row["ratios"]["TTFT mean"] == pytest.approx(0.5)
    assert row["ratios"]["E2E mean"] == pytest.approx(0.5)


def test_paired_ratio_of_batches() -> None:
    steady = PairedRatio.of([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert steady is not None and steady.batches == 3
    assert steady.mean == pytest.approx(2.0) and steady.low == pytest.approx(2.0)
    # Drift shared by both sides cancels out; noise within a pair widens the interval.
    noisy = PairedRatio.of([1.1, 3.0, 5.0, 0.9], [1.0, 3.0, 5.5, 1.0])
    assert noisy is not None
    expected = math.exp(statistics.fmean(math.log(r) for r in (1.1, 1.0, 5.0 / 5.5, 0.9)))
    assert noisy.mean == pytest.approx(expected)
    assert noisy.low < noisy.mean < noisy.high
    assert PairedRatio.of([1.0, 1.0], [1.0, 1.0]) is None  # too few batches
    assert PairedRatio.of([1.0] * 3, [1.0] * 4) is None
    assert PairedRatio.of([1.0, 0.0, 1.0], [1.0] * 3) is None  # a batch with nothing done


def test_split_and_abba_order() -> None:
    plan = LoadPlan(levels=[], num_requests=7, duration=None)
    assert [p.num_requests for p in split(plan, 2)] == [4, 3]
    timed = LoadPlan(levels=[], num_requests=None, duration=10.0)
    assert [p.duration for p in split(timed, 2)] == [5.0, 5.0]
    rounds = split(LoadPlan(levels=[], num_requests=10, duration=None, rounds=4), 4)
    assert [p.num_requests for p in rounds] == [3, 3, 2, 2]
    assert {p.rounds for p in rounds} == {4} and [p.seed for p in rounds] == [0, 1, 2, 3]
    order = [abba_order(level, batch) for level in range(2) for batch in range(2)]
    assert order == [(0, 1), (1, 0), (1, 0), (0, 1)]


def test_parse_sizes() -> None:
    assert parse_sizes("336x336, 1024X768") == [(336, 336), (1024, 768)]
    for bad in ("336", "0x5", "axb"):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_synthetic_images_are_distinct_and_sized() -> None:
    pool = synthetic_pool([(336, 336), (64, 48)], "png", 4)
    assert [(i.width, i.height) for i in pool] == [(336, 336), (64, 48)] * 2
    assert len({i.data_url for i in pool}) == 4
    assert all(i.data_url.startswith("data:image/png;base64,") for i in pool)


def test_bodies_carry_images_round_robin_and_length_extensions() -> None:
    workload = Workload(synthetic_pool([(32, 32)], "jpeg", 3), 2, "Describe.", 16, detail="low")
    body = workload.body("m", 0, enforce_length=True)
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]
    assert parts[1]["image_url"]["detail"] == "low"
    assert (body["min_tokens"], body["ignore_eos"], body["max_tokens"]) == (16, True, 16)
    assert body["stream_options"] == {"include_usage": True}
    plain = workload.body("m", 0, enforce_length=False)
    assert "min_tokens" not in plain and "ignore_eos" not in plain
    bodies = workload.encoded_bodies("m", enforce_length=True)
    # Request i of a 3-image pool with 2 images each uses images 2i and 2i+1 (mod 3).
    assert json.loads(bodies[1])["messages"] == workload.body("m", 4, True)["messages"]


def test_photo_presets_are_distinct_photo_sized_jpegs() -> None:
    images = photo_images(640, 480, 3, seed=1)
    assert len({i.data_url for i in images}) == 3
    assert all((i.width, i.height, i.mime) == (640, 480, "image/jpeg") for i in images)
    # Grain and detail make it weigh like a photo, not like a flat synthetic picture.
    assert min(i.nbytes for i in images) > 640 * 480 // 10
    assert PRESETS["phone"] == (4032, 3024)


def test_multi_turn_bodies_resend_the_image_with_the_history() -> None:
    workload = Workload(synthetic_pool([(32, 32)], "jpeg", 2), 1, "Describe.", 8, turns=3)
    bodies = [json.loads(b) for b in workload.encoded_bodies("m", enforce_length=False)]
    assert len(bodies) == 2 * 3
    # All first turns, then all second turns, ...: request 3 is conversation 1's second turn.
    roles = [m["role"] for m in bodies[3]["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert bodies[3]["messages"][0] == bodies[1]["messages"][0]
    assert bodies[3]["messages"][0] != bodies[0]["messages"][0]
    assert len(bodies[5]["messages"]) == 5
    assert workload.describe()["turns"] == 3


def test_load_image_dir_keeps_files_as_they_are(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    Image.new("RGB", (20, 10), "blue").save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_image_dir(tmp_path)
    assert [(i.width, i.height, i.mime) for i in images] == [
        (40, 30, "image/png"),
        (20, 10, "image/jpeg"),
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError):
        load_image_dir(empty)


def test_stream_state_times_text_chunks_and_reads_usage() -> None:
    record = RequestRecord(index=0, target="A", images=1)
    state = _StreamState(record, started=10.0)
    state.on_event({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, 10.05)
    state.on_event({"choices": [{"delta": {"content": "Hel"}}]}, 10.25)
    state.on_event({"choices": [{"delta": {"content": "lo"}, "finish_reason": "length"}]}, 10.5)
    state.on_event({"choices": [], "usage": {"prompt_tokens": 600, "completion_tokens": 3}}, 10.6)
    assert record.ttft == pytest.approx(0.25)  # the role-only chunk carries no text
    assert record.first_chunk == pytest.approx(0.05)
    assert record.itl == [pytest.approx(0.25)]
    assert (record.output_tokens, record.prompt_tokens, record.tokens_from_usage) == (3, 600, True)
    assert record.finish_reason == "length"


def test_stream_state_records_error_events() -> None:
    record = RequestRecord(index=0, target="A", images=1)
    _StreamState(record, 0.0).on_event({"error": {"message": "overloaded", "type": "x"}}, 1.0)
    assert (record.error, record.error_message) == ("stream_error", "overloaded")


def test_text_table_aligns_columns() -> None:
    table = text_table(["a", "long header"], [["1", "2"], ["333", "4"]])
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1
