"""Planning a candle run: which windows it recomputes and what it may record afterwards.

An incremental run recomputes the windows touched by trades appended since the candle table's
watermark, within a budget of new trades (:func:`plan_new_trades`); a completed backfill may
record the trades snapshot it covered as the watermark (:func:`watermark_after_backfill`). A
backfill can size its chunks by trades (:func:`plan_chunks`): one aggregation over the range
counts the trades per hour (or day), and each chunk then knows its trade count and trade_id
range without a query of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from core.ranges import (
    SMALLEST_CHUNK_SHARE,
    Range,
    align_down,
    align_up,
    merge_small_chunks,
    window_of,
)
from core.tables import Tables
from core.time import from_us
from core.timeframes import Timeframe
from spark_jobs.candles import window_start_us
from spark_jobs.ordering import TEXT_ID, TradeIdRange
from spark_jobs.reads import in_ranges
from spark_jobs.results import RunResult
from spark_jobs.snapshots import Progress, snapshot_exists


@dataclass(frozen=True)
class TradeStats:
    """What a run would otherwise count first: its trades and their trade_id range (None when
    there are none, or some id is text)."""

    trades: int
    trade_ids: TradeIdRange | None


@dataclass(frozen=True)
class Chunk:
    """One backfill chunk: whole windows, and the stats of the trades in them."""

    window_range: Range
    stats: TradeStats


def plan_chunks(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    start: datetime,
    end: datetime,
    trades_snapshot: int,
    chunk_trades: int,
) -> list[Chunk]:
    """Chunks of whole windows covering [start, end), each with about ``chunk_trades`` trades.

    One aggregation over the range's trades (ts and trade_id only) counts them per slot (an
    hour, or one window for timeframes of an hour or more); consecutive slots are grouped while
    their trades fit ``chunk_trades`` (a slot is never split); a chunk of fewer than a quarter of
    ``chunk_trades`` is joined to the one before it. The chunks tile the range, gaps included,
    and each knows its trade count and trade_id range.
    """
    if chunk_trades < 1:
        raise ValueError(f"chunk_trades must be at least 1, got {chunk_trades}")
    whole = Range(align_down(start, tf), align_up(end, tf))
    slot_us = max(tf.width_us, 3_600_000_000)
    slot = F.unix_micros(F.col("ts")) - F.pmod(F.unix_micros(F.col("ts")), F.lit(slot_us))
    # A snapshot from before text ids is read with its own schema (no trade_id_text).
    trades = spark.read.option("versionAsOf", trades_snapshot).table(tables.trades)
    rows = (
        trades.where(in_ranges(F.col("ts"), [whole]))
        .groupBy(slot.alias("slot"))
        .agg(*_count_and_id_range(trades.columns))
        .orderBy("slot")
        .collect()
    )
    chunks: list[Chunk] = []
    cursor = whole.start
    n, low, high, text = 0, None, None, 0
    for i, row in enumerate(rows):
        n, low, high, text = (
            n + int(row["n"]),
            _lower(low, row["low"]),
            _higher(high, row["high"]),
            text + int(row["text"]),
        )
        following = rows[i + 1] if i + 1 < len(rows) else None
        if following is not None and n + int(following["n"]) <= chunk_trades:
            continue
        cut = whole.end if following is None else max(from_us(int(following["slot"])), cursor)
        if cut > cursor:
            ids = None
            if low is not None and high is not None and not text:
                ids = TradeIdRange(low, high)
            chunks.append(Chunk(Range(cursor, cut), TradeStats(n, ids)))
            cursor = cut
        n, low, high, text = 0, None, None, 0
    if cursor < whole.end or not chunks:
        chunks.append(Chunk(Range(cursor, whole.end), TradeStats(0, None)))
    return merge_small_chunks(
        chunks, size=lambda c: c.stats.trades / chunk_trades, limit=SMALLEST_CHUNK_SHARE, join=_join
    )


def _join(a: Chunk, b: Chunk) -> Chunk:
    """Two consecutive chunks as one: their range and the stats of all their trades (an id
    range only when each chunk with trades has one: none means some id is text)."""
    holding = [c.stats for c in (a, b) if c.stats.trades]
    ids = [s.trade_ids for s in holding if s.trade_ids is not None]
    joined = None
    if ids and len(ids) == len(holding):
        joined = TradeIdRange(min(r.low for r in ids), max(r.high for r in ids))
    return Chunk(
        Range(a.window_range.start, b.window_range.end),
        TradeStats(a.stats.trades + b.stats.trades, joined),
    )


def _count_and_id_range(columns: list[str]) -> list[Column]:
    """Aggregates: trades (n), smallest and largest numeric id (low, high), text ids (text)."""
    text = F.count(TEXT_ID) if columns is None or TEXT_ID in columns else F.lit(0).cast("long")
    return [
        F.count(F.lit(1)).alias("n"),
        F.min("trade_id").alias("low"),
        F.max("trade_id").alias("high"),
        text.alias("text"),
    ]


def _lower(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _higher(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def trade_stats(trades: DataFrame) -> TradeStats:
    """The trades' count and, when every id is a number, their id range."""
    row = trades.agg(*_count_and_id_range(trades.columns)).collect()[0]
    n = int(row["n"])
    numeric = n and not int(row["text"])
    return TradeStats(n, TradeIdRange(int(row["low"]), int(row["high"])) if numeric else None)


def plan_new_trades(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    before: Progress,
    current: int,
    result: RunResult,
    late_before: datetime | None,
    max_new_trades: int | None,
    present: set[int] | None = None,
) -> tuple[list[Range], Progress]:
    """Windows touched by trades appended since the watermark (within the budget), and the
    progress the run records; counts them into ``result``. ``present``: which of the
    snapshots ``before`` names still exist, when already known."""
    if before.watermark == current and not before.catching_up:
        return [], before
    start = before
    if present is None:
        present = {s for s in before.snapshots() if snapshot_exists(spark, tables.trades, s)}
    gone = sorted(before.snapshots() - present)
    if gone:
        result.notes.append(
            f"trades snapshot(s) {', '.join(map(str, gone))} that {tf} last read from no longer "
            "exist (expired outside this pipeline's maintenance): the trades appended since "
            "cannot be told apart, so every window of the trades' history is recomputed, in "
            "bounded steps"
        )
        start = Progress()
    upto = start.catch_up_target if start.catch_up_target is not None else current
    touched = _touched_windows(spark, tables, tf, start.watermark, upto, start.catch_up_through)
    chosen, rest = _within_budget(touched, max_new_trades)
    result.new_trades = sum(n for _, n in chosen)
    result.pending_trades = sum(n for _, n in rest)
    if late_before is not None:
        result.late_trades = sum(n for w, n in chosen if w < late_before)
    if not rest:
        return [window_of(w, tf) for w, _ in chosen], Progress(watermark=upto)
    result.notes.append(
        f"catching up in bounded steps: {result.pending_trades} newer trades are left for the "
        f"next runs (at most {max_new_trades} per run)"
    )
    return [window_of(w, tf) for w, _ in chosen], Progress(start.watermark, upto, rest[0][0])


def _touched_windows(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    since: int | None,
    until: int,
    from_: datetime | None = None,
) -> list[tuple[datetime, int]]:
    """(window start, trade count) of trades appended after snapshot ``since`` up to ``until``,
    oldest window first; only windows from ``from_`` on when given."""
    reader = spark.read
    if since is None:
        reader = reader.option("versionAsOf", until)
    else:
        # Incremental reads skip non-append snapshots; trades is append-only by contract.
        reader = reader.option("start-snapshot-id", since).option("end-snapshot-id", until)
    appended = reader.table(tables.trades)
    if from_ is not None:
        appended = appended.where(F.col("ts") >= F.lit(from_))
    rows = (
        appended.groupBy(window_start_us(F.col("ts"), tf).alias("w"))
        .agg(F.count(F.lit(1)).alias("n"))
        .orderBy("w")
        .collect()
    )
    return [(from_us(int(r["w"])), int(r["n"])) for r in rows]


def _within_budget(
    touched: list[tuple[datetime, int]], budget: int | None
) -> tuple[list[tuple[datetime, int]], list[tuple[datetime, int]]]:
    """The oldest windows whose trades fit the budget (at least one), and the rest."""
    if budget is None:
        return touched, []
    total = 0
    for i, (_, n) in enumerate(touched):
        total += n
        if total > budget and i > 0:
            return touched[:i], touched[i:]
    return touched, []


def watermark_after_backfill(
    spark: SparkSession, tables: Tables, snapshot: int, covered: Range, result: RunResult
) -> Progress:
    """The watermark a completed backfill may record: ``snapshot``, if all its trades were in
    the backfilled range (min/max come from file statistics, not a scan)."""
    bounds = (
        spark.read.option("versionAsOf", snapshot)
        .table(tables.trades)
        .agg(F.min("ts").alias("lo"), F.max("ts").alias("hi"))
        .select(F.unix_micros("lo").alias("lo"), F.unix_micros("hi").alias("hi"))
        .collect()[0]
    )
    lo, hi = bounds["lo"], bounds["hi"]
    if lo is None or from_us(lo) < covered.start or from_us(hi) >= covered.end:
        result.notes.append(
            "the backfill did not cover every trade, so no watermark is recorded: the next "
            "incremental run catches up on the whole history, in bounded steps"
        )
        return Progress()
    result.notes.append(f"the backfill covered every trade of trades snapshot {snapshot}")
    return Progress(watermark=snapshot)
