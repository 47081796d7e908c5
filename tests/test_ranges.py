"""Window arithmetic of the jobs (pure Python)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.ranges import (
    Range,
    align_down,
    align_up,
    backfill_ranges,
    coalesce_ranges,
    lookback_range,
    merge_small_chunks,
)
from core.timeframes import TIMEFRAMES, timeframe

T = datetime(2026, 11, 26, 14, 7, 31, 250_000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "start", "end"),
    [
        # starts at the window boundary at or before now - lookback; ends after now's window
        (
            "1m",
            datetime(2026, 11, 26, 13, 57, tzinfo=UTC),
            datetime(2026, 11, 26, 14, 8, tzinfo=UTC),
        ),
        (
            "5m",
            datetime(2026, 11, 26, 13, 45, tzinfo=UTC),
            datetime(2026, 11, 26, 14, 10, tzinfo=UTC),
        ),
        (
            "30m",
            datetime(2026, 11, 26, 13, 0, tzinfo=UTC),
            datetime(2026, 11, 26, 14, 30, tzinfo=UTC),
        ),
        (
            "1h",
            datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
            datetime(2026, 11, 26, 15, 0, tzinfo=UTC),
        ),
        ("1d", datetime(2026, 11, 24, 0, 0, tzinfo=UTC), datetime(2026, 11, 27, 0, 0, tzinfo=UTC)),
    ],
)
def test_lookback_covers_whole_windows(name: str, start: datetime, end: datetime) -> None:
    assert lookback_range(TIMEFRAMES[name], T) == Range(start, end)


def test_boundary_instant_belongs_to_the_window_it_starts() -> None:
    tf = TIMEFRAMES["5m"]
    boundary = datetime(2026, 11, 26, 14, 10, tzinfo=UTC)
    assert align_down(boundary, tf) == boundary == align_up(boundary, tf)
    assert align_up(boundary + timedelta(microseconds=1), tf) == boundary + tf.width


def test_naive_times_and_negative_lookbacks_are_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        align_down(datetime(2026, 1, 1), TIMEFRAMES["1m"])
    with pytest.raises(ValueError, match="negative"):
        lookback_range(TIMEFRAMES["1m"], T, timedelta(minutes=-1))
    with pytest.raises(ValueError, match="use one of 1m, 5m, 30m, 1h, 1d"):
        timeframe("2m")


def _r(a: int, b: int) -> Range:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    return Range(base + timedelta(minutes=a), base + timedelta(minutes=b))


def test_ranges_merge_when_overlapping_or_adjacent() -> None:
    assert coalesce_ranges([_r(5, 6), _r(0, 2), _r(2, 3), _r(1, 4)]) == [_r(0, 4), _r(5, 6)]


def test_too_many_ranges_close_the_smallest_gaps_and_cover_everything() -> None:
    ranges = [_r(10 * i, 10 * i + 1 + (i % 3)) for i in range(100)]
    merged = coalesce_ranges(ranges, max_ranges=7)
    assert len(merged) <= 7
    for r in ranges:  # nothing is left uncovered
        assert any(m.start <= r.start and r.end <= m.end for m in merged)


def test_a_backfill_tail_shorter_than_a_quarter_chunk_joins_the_chunk_before_it() -> None:
    day = datetime(2026, 11, 1, tzinfo=UTC)
    tf = timeframe("1m")
    # Given: 2 days and 5 hours in daily chunks (the tail is 5/24 of a chunk, under a quarter)
    chunks = backfill_ranges(tf, day, day + timedelta(days=2, hours=5), timedelta(days=1))
    # Then: two chunks, the second holding the tail; together they still tile the range
    assert chunks == [
        Range(day, day + timedelta(days=1)),
        Range(day + timedelta(days=1), day + timedelta(days=2, hours=5)),
    ]
    # A tail of a quarter or more stays a chunk of its own
    kept = backfill_ranges(tf, day, day + timedelta(days=2, hours=6), timedelta(days=1))
    assert [c.end - c.start for c in kept] == [timedelta(days=1)] * 2 + [timedelta(hours=6)]
    # A range shorter than a quarter chunk is one chunk
    assert backfill_ranges(tf, day, day + timedelta(hours=1), timedelta(days=1)) == [
        Range(day, day + timedelta(hours=1))
    ]


def test_small_chunks_join_a_neighbour_and_the_total_is_kept() -> None:
    def join(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
        return (a[0], a[1] + b[1])

    # (first slot, size): a small first chunk joins the next, a small middle or last the one
    # before it
    chunks = [(0, 1), (1, 10), (2, 2), (3, 9), (4, 1)]
    merged = merge_small_chunks(chunks, size=lambda c: c[1] / 10, limit=0.25, join=join)
    assert merged == [(0, 13), (3, 10)]
    assert sum(c[1] for c in merged) == sum(c[1] for c in chunks)
    assert merge_small_chunks([(0, 1)], size=lambda c: c[1] / 10, limit=0.25, join=join) == [(0, 1)]
