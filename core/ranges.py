"""Window arithmetic in plain Python: half-open ranges, alignment, lookbacks, backfill chunks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from core.time import from_us, to_us
from core.timeframes import Timeframe

# A filter with more time ranges than this is coarsened: recomputing a few extra windows is
# harmless (unchanged candles are not rewritten), a huge OR-expression is not.
MAX_RANGES = 64

SMALLEST_CHUNK_SHARE = 0.25
"""No backfill chunk is smaller than this share of the chunk size: a small tail is merged into
the chunk before it, which costs less than a chunk's whole fixed cost (a flow run, an audit,
a validation, a publish) paid for a few trades."""

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """A half-open time range [start, end)."""

    start: datetime
    end: datetime


def align_down(ts: datetime, tf: Timeframe) -> datetime:
    """Start of the window holding ``ts``."""
    us = to_us(ts)
    return from_us(us - us % tf.width_us)


def align_up(ts: datetime, tf: Timeframe) -> datetime:
    """Smallest window boundary at or after ``ts``."""
    down = align_down(ts, tf)
    return down if down == ts else down + tf.width


def window_of(start: datetime, tf: Timeframe) -> Range:
    """The window of ``tf`` that starts at ``start``."""
    return Range(start, start + tf.width)


def lookback_range(tf: Timeframe, now: datetime, lookback: timedelta | None = None) -> Range:
    """Whole windows from the boundary at or before ``now - lookback`` to the one holding now."""
    lookback = tf.lookback if lookback is None else lookback
    if lookback < timedelta(0):
        raise ValueError(f"lookback {lookback} is negative: pass a duration >= 0")
    return Range(align_down(now - lookback, tf), align_down(now, tf) + tf.width)


def coalesce_ranges(ranges: Sequence[Range], max_ranges: int = MAX_RANGES) -> list[Range]:
    """Sort and merge overlapping/adjacent ranges; close the smallest gaps beyond max_ranges."""
    merged: list[Range] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if merged and r.start <= merged[-1].end:
            merged[-1] = Range(merged[-1].start, max(merged[-1].end, r.end))
        else:
            merged.append(r)
    while len(merged) > max_ranges:
        gaps = [merged[i + 1].start - merged[i].end for i in range(len(merged) - 1)]
        threshold = sorted(gaps)[len(merged) - max_ranges - 1]
        out = [merged[0]]
        for r, gap in zip(merged[1:], gaps, strict=True):
            if gap <= threshold:
                out[-1] = Range(out[-1].start, r.end)
            else:
                out.append(r)
        merged = out
    return merged


def backfill_ranges(tf: Timeframe, start: datetime, end: datetime, chunk: timedelta) -> list[Range]:
    """The bounded chunks, whole windows each, that cover every window overlapping [start, end);
    a tail shorter than a quarter of ``chunk`` is part of the chunk before it."""
    if end <= start:
        raise ValueError(f"backfill end {end.isoformat()} is not after start {start.isoformat()}")
    if chunk < tf.width:
        raise ValueError(
            f"backfill chunk {chunk} is shorter than one {tf} window: use >= {tf.width}"
        )
    chunks = []
    cursor = align_down(start, tf)
    stop = align_up(end, tf)
    while cursor < stop:
        chunk_end = min(align_up(cursor + chunk, tf), stop)
        chunks.append(Range(cursor, chunk_end))
        cursor = chunk_end
    return merge_small_chunks(
        chunks,
        size=lambda r: (r.end - r.start) / chunk,
        limit=SMALLEST_CHUNK_SHARE,
        join=lambda a, b: Range(a.start, b.end),
    )


def merge_small_chunks(
    chunks: list[T], size: Callable[[T], float], limit: float, join: Callable[[T, T], T]
) -> list[T]:
    """``chunks`` (consecutive, oldest first) with every chunk whose ``size`` is below
    ``limit`` joined to the chunk before it (the first one to the chunk after it)."""
    merged: list[T] = []
    for c in chunks:
        if merged and size(c) < limit:
            merged[-1] = join(merged[-1], c)
        else:
            merged.append(c)
    if len(merged) > 1 and size(merged[0]) < limit:
        merged[:2] = [join(merged[0], merged[1])]
    return merged
