"""Job functions: read trades from Iceberg, recompute whole windows, MERGE what changed.

Every job takes a SparkSession and parameters; none creates a session or reads settings.

Correctness rules (see DESIGN.md):
- Replace, never add: a window is always recomputed from all of its trades.
- Late trades are never lost: each candle commit records in its snapshot summary the ``trades``
  snapshot it has processed (``WATERMARK_PROPERTY``); the next run also recomputes every window
  touched by trades appended since then, however old.
- A MERGE that matches nothing still commits, so unchanged candles are filtered out first and
  no snapshot is written when nothing changed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_jobs.candles import CANDLE_COLUMNS, TradeIdRange, candles, window_start_us
from spark_jobs.tables import CANDLE_KEY, CANDLE_VALUE_COLUMNS, Tables
from spark_jobs.timeframes import Timeframe

log = logging.getLogger(__name__)

WATERMARK_PROPERTY = "ohlcv.trades-snapshot-id"
_SNAPSHOT_PROPERTY_CONF = "spark.sql.iceberg.snapshot-property."
# A filter with more time ranges than this is coarsened: recomputing a few extra windows is
# harmless (unchanged candles are not rewritten), a huge OR-expression is not.
MAX_RANGES = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Range:
    """A half-open time range [start, end)."""

    start: datetime
    end: datetime


@dataclass
class RunResult:
    """What one candle run read, recomputed and wrote."""

    timeframe: str
    ranges: list[Range]
    trades_snapshot_id: int | None
    previous_watermark: int | None
    watermark: int | None
    trades_read: int = 0
    new_trades: int = 0
    late_trades: int = 0
    windows_recomputed: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    candle_snapshot_id: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def written(self) -> bool:
        return self.inserted + self.updated > 0


# Time helpers ---------------------------------------------------------------------------------


def _us(ts: datetime) -> int:
    if ts.tzinfo is None:
        raise ValueError(f"{ts.isoformat()} has no time zone: pass an aware datetime (UTC)")
    return (ts - _EPOCH) // timedelta(microseconds=1)


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def align_down(ts: datetime, tf: Timeframe) -> datetime:
    """Start of the window holding ``ts``."""
    us = _us(ts)
    return _from_us(us - us % tf.width_us)


def align_up(ts: datetime, tf: Timeframe) -> datetime:
    """Smallest window boundary at or after ``ts``."""
    down = align_down(ts, tf)
    return down if down == ts else down + tf.width


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


def on_branch(table: str, branch: str | None) -> str:
    """The identifier that reads or writes ``branch`` of ``table`` (``main`` when None)."""
    return f"{table}.branch_{branch}" if branch else table


def in_ranges(column: Column, ranges: Sequence[Range]) -> Column:
    """True where ``column`` falls in one of the half-open ranges."""
    condition = F.lit(False)
    for r in ranges:
        condition = condition | ((column >= F.lit(r.start)) & (column < F.lit(r.end)))
    return condition


# Iceberg metadata -----------------------------------------------------------------------------


def main_snapshot_id(spark: SparkSession, table: str) -> int | None:
    """Snapshot id of the table's ``main`` branch (None for a table never written)."""
    return branch_snapshot_id(spark, table, "main")


def branch_snapshot_id(spark: SparkSession, table: str, branch: str) -> int | None:
    """Snapshot id a branch (or tag) of the table points at (None if it does not exist)."""
    rows = spark.read.table(f"{table}.refs").where(F.col("name") == F.lit(branch)).collect()
    return int(rows[0]["snapshot_id"]) if rows else None


def snapshot_summary(spark: SparkSession, table: str, snapshot_id: int) -> dict[str, str]:
    rows = (
        spark.read.table(f"{table}.snapshots")
        .where(F.col("snapshot_id") == F.lit(snapshot_id))
        .select("summary")
        .collect()
    )
    return dict(rows[0]["summary"]) if rows else {}


def watermark(spark: SparkSession, table: str) -> int | None:
    """The ``trades`` snapshot whose trades the candle table's ``main`` fully reflects."""
    snapshot = main_snapshot_id(spark, table)
    if snapshot is None:
        return None
    value = snapshot_summary(spark, table, snapshot).get(WATERMARK_PROPERTY)
    return int(value) if value is not None else None


@contextmanager
def snapshot_properties(spark: SparkSession, properties: dict[str, str]) -> Iterator[None]:
    """Attach properties to the snapshot of every Iceberg write inside the block."""
    keys = [_SNAPSHOT_PROPERTY_CONF + k for k in properties]
    for key, value in zip(keys, properties.values(), strict=True):
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key in keys:
            spark.conf.unset(key)


# The run -------------------------------------------------------------------------------------


def _touched_windows(
    spark: SparkSession, tables: Tables, tf: Timeframe, since: int | None, until: int
) -> list[tuple[datetime, int]]:
    """(window start, trade count) of trades appended after snapshot ``since`` up to ``until``."""
    reader = spark.read
    if since is None:
        reader = reader.option("versionAsOf", until)
    else:
        # Incremental reads skip non-append snapshots; trades is append-only by contract.
        reader = reader.option("start-snapshot-id", since).option("end-snapshot-id", until)
    rows = (
        reader.table(tables.trades)
        .groupBy(window_start_us(F.col("ts"), tf).alias("w"))
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    )
    return [(_from_us(int(r["w"])), int(r["n"])) for r in rows]


def refresh_candles(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    *,
    now: datetime | None = None,
    lookback: timedelta | None = None,
    computed_at: datetime | None = None,
    branch: str | None = None,
) -> RunResult:
    """Incremental (1m, 5m) or batch (30m, 1h, 1d) run: recompute and MERGE affected windows.

    The recomputed windows are those of the lookback (``lookback_range``) plus every window
    touched by trades appended since the candle table's watermark. The new watermark commits in
    the same snapshot as the candles.

    Args:
        spark: an open session (Spark Connect or classic).
        tables: where trades and candles live.
        tf: the timeframe.
        now: the run's reference time (default: the clock).
        lookback: default: the timeframe's.
        computed_at: stamped on written candles (default: the clock).
        branch: write to this branch of the candle table instead of ``main`` (write-audit-
            publish: see :mod:`spark_jobs.wap`). The watermark is still read from ``main``,
            which is what has been published; the new one travels with the branch snapshot.
    """
    now = now or datetime.now(UTC)
    lookback_window = lookback_range(tf, now, lookback)
    return _run(
        spark,
        tables,
        tf,
        [lookback_window],
        advance_watermark=True,
        computed_at=computed_at,
        late_before=lookback_window.start,
        branch=branch,
    )


def backfill_ranges(tf: Timeframe, start: datetime, end: datetime, chunk: timedelta) -> list[Range]:
    """The bounded chunks, whole windows each, that cover every window overlapping [start, end)."""
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
    return chunks


def recompute(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    window_range: Range,
    *,
    computed_at: datetime | None = None,
    branch: str | None = None,
) -> RunResult:
    """Recompute every window of ``window_range`` (one backfill chunk); keep the watermark."""
    return _run(
        spark,
        tables,
        tf,
        [window_range],
        advance_watermark=False,
        computed_at=computed_at,
        branch=branch,
    )


def backfill(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    start: datetime,
    end: datetime,
    *,
    chunk: timedelta = timedelta(days=1),
    computed_at: datetime | None = None,
    branch: str | None = None,
) -> Iterator[RunResult]:
    """Recompute every window overlapping [start, end), one bounded chunk at a time.

    Yields one RunResult per chunk, oldest first. The watermark is carried over unchanged, so
    trades appended since the last refresh are still picked up by the next refresh.
    """
    for window_range in backfill_ranges(tf, start, end, chunk):
        yield recompute(spark, tables, tf, window_range, computed_at=computed_at, branch=branch)


def _run(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    ranges: list[Range],
    *,
    advance_watermark: bool,
    computed_at: datetime | None,
    late_before: datetime | None = None,
    branch: str | None = None,
) -> RunResult:
    table = tables.candles(tf)
    target = on_branch(table, branch)
    trades_snapshot = main_snapshot_id(spark, tables.trades)
    previous = watermark(spark, table)
    result = RunResult(tf.name, ranges, trades_snapshot, previous, previous)
    if trades_snapshot is None:
        result.notes.append("trades is empty")
        return result

    windows = list(ranges)
    if advance_watermark and previous != trades_snapshot:
        touched = _touched_windows(spark, tables, tf, previous, trades_snapshot)
        result.new_trades = sum(n for _, n in touched)
        if late_before is not None:
            result.late_trades = sum(n for w, n in touched if w < late_before)
        windows += [Range(w, w + tf.width) for w, _ in touched]
    ranges = coalesce_ranges(windows)
    result.ranges = ranges

    # Pin the read to one snapshot: an append landing mid-run must not slip in under a
    # watermark that does not cover it.
    trades = (
        spark.read.option("versionAsOf", trades_snapshot)
        .table(tables.trades)
        .where(in_ranges(F.col("ts"), ranges))
    )
    stats = trades.agg(
        F.count(F.lit(1)).alias("n"),
        F.min("trade_id").alias("low"),
        F.max("trade_id").alias("high"),
    ).collect()[0]
    result.trades_read = int(stats["n"])
    new_watermark = trades_snapshot if advance_watermark else previous
    if result.trades_read == 0:
        return result

    stamp = computed_at or datetime.now(UTC)
    fresh = candles(trades, tf, TradeIdRange(int(stats["low"]), int(stats["high"]))).withColumn(
        "computed_at", F.lit(stamp)
    )
    existing = spark.read.table(target).where(in_ranges(F.col("window_start"), ranges))
    # Cached, not localCheckpoint(): with several Connect sessions in one process, pyspark
    # 4.1 binds the checkpointed DataFrame to SparkSession.active(), which may be another one.
    compared = _compare(fresh, existing).cache()
    try:
        # One pass gives the counts and the window bounds the MERGE condition prunes by.
        groups = {
            r["_change"]: r
            for r in compared.groupBy("_change")
            .agg(
                F.count(F.lit(1)).alias("n"),
                F.min("window_start").alias("lo"),
                F.max("window_start").alias("hi"),
            )
            .collect()
        }
        counts = {change: int(r["n"]) for change, r in groups.items()}
        result.inserted = counts.get("insert", 0)
        result.updated = counts.get("update", 0)
        result.unchanged = counts.get("unchanged", 0)
        result.windows_recomputed = result.inserted + result.updated + result.unchanged

        if not result.written:
            # Nothing to commit; the watermark stays where it is and the next run rereads.
            return result
        changed = compared.where(F.col("_change") != "unchanged").select(
            *CANDLE_COLUMNS, "computed_at"
        )
        written = [groups[c] for c in ("insert", "update") if c in groups]
        bounds = (min(r["lo"] for r in written), max(r["hi"] for r in written))
        properties = {WATERMARK_PROPERTY: str(new_watermark)} if new_watermark is not None else {}
        _merge(spark, target, changed, bounds, properties)
    finally:
        compared.unpersist()
    result.candle_snapshot_id = branch_snapshot_id(spark, table, branch or "main")
    result.watermark = new_watermark
    return result


def _compare(fresh: DataFrame, existing: DataFrame) -> DataFrame:
    """Label each fresh candle insert / update / unchanged against the stored one."""
    stored = existing.select(
        *[F.col(c).alias(f"_old_{c}") for c in (*CANDLE_KEY, *CANDLE_VALUE_COLUMNS)]
    )
    on = [fresh[c] == stored[f"_old_{c}"] for c in CANDLE_KEY]
    same = F.lit(True)
    for c in CANDLE_VALUE_COLUMNS:
        same = same & fresh[c].eqNullSafe(stored[f"_old_{c}"])
    change = (
        F.when(stored[f"_old_{CANDLE_KEY[0]}"].isNull(), F.lit("insert"))
        .when(same, F.lit("unchanged"))
        .otherwise(F.lit("update"))
    )
    return fresh.join(stored, on, "left").select(
        *CANDLE_COLUMNS, "computed_at", change.alias("_change")
    )


def _merge(
    spark: SparkSession,
    target: str,
    changed: DataFrame,
    bounds: tuple[datetime, datetime],
    properties: dict[str, str],
) -> None:
    """MERGE changed candles (window starts within ``bounds``) into ``target``: replace, insert."""
    view = f"ohlcv_changed_{uuid.uuid4().hex}"
    changed.createOrReplaceTempView(view)
    args: dict[str, Any] = {"target": target, "lo": bounds[0], "hi": bounds[1]}
    # The view name is generated here, never user input; values travel as parameters.
    query = f"""
        MERGE INTO IDENTIFIER(:target) AS t
        USING {view} AS s
        ON t.exchange = s.exchange AND t.symbol = s.symbol AND t.window_start = s.window_start
           AND t.window_start BETWEEN :lo AND :hi
        WHEN MATCHED THEN UPDATE SET *
        WHEN NOT MATCHED THEN INSERT *
    """
    try:
        with snapshot_properties(spark, properties):
            spark.sql(query, args=args)
    finally:
        spark.catalog.dropTempView(view)
