"""Job functions: read trades from Iceberg, recompute whole windows, MERGE what changed.

Every job takes a SparkSession and parameters; none creates a session or reads settings.

Correctness rules (see the README's "How candles stay exact"):
- Replace, never add: a window is always recomputed from all of its trades.
- Late trades are never lost: each candle commit records in its snapshot summary the ``trades``
  snapshot it has processed (``WATERMARK_PROPERTY``); the next run also recomputes every window
  touched by trades appended since then, however old.
- A MERGE that matches nothing still commits, so unchanged candles are filtered out first and
  only changed candles are written. A run that read new trades but changed no candle records
  its new watermark in an empty commit, so the next run does not read those trades again.
- Bounded catch-up: a run processes at most ``max_new_trades`` newly appended trades (windows
  are still recomputed whole); the rest is left for the next runs, which continue where it
  stopped (see :class:`spark_jobs.snapshots.Progress`).
- Revisions: a changed candle that had been published after its window closed is a revision
  (a late trade corrected it); the diff that finds changed candles also keeps their old values,
  so a run knows its revisions without another query (:mod:`spark_jobs.revisions`).

A run has three steps: plan (which windows, from the lookback and the watermark), diff (fresh
candles against stored ones) and write (MERGE the changed candles with the new watermark).

A backfill chunk whose windows hold no candle yet (the first fill of a range) has nothing to
diff: its candles are written in one pass (trades -> candles -> files, an overwrite of exactly
its windows), with no comparison, cache or MERGE. A backfill can size its chunks by trades
(``chunk_trades``): one aggregation over the range counts the trades per hour (or day), and
each chunk then knows its trade count and trade_id range without a query of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DecimalType, LongType, StringType, StructField, StructType

from core.calendars import UTC_MARKET, Market
from core.ranges import (
    Range,
    align_down,
    align_up,
    coalesce_ranges,
    lookback_range,
    window_of,
)
from core.tables import CANDLE_KEY, CANDLE_VALUE_COLUMNS, REVISED_COLUMNS, Tables
from core.time import from_us, to_us
from core.timeframes import Timeframe
from spark_jobs.candles import (
    CANDLE_COLUMNS,
    TradeIdRange,
    candles,
    synthetic_candles,
    window_start_us,
)
from spark_jobs.reads import in_ranges, on_branch, overlapping
from spark_jobs.snapshots import (
    Progress,
    branch_snapshot_id,
    head_and_existing,
    main_snapshot_id,
    progress,
    snapshot_exists,
    snapshot_properties,
    snapshot_summary,
)

MAX_REVISIONS_KEPT = 100_000
"""Revisions a run keeps for the record (all are counted): a backfill that rewrites history
should not pull millions of rows into the client."""


@dataclass(frozen=True)
class TradeStats:
    """What a run would otherwise count first: its trades and their trade_id range."""

    trades: int
    trade_ids: TradeIdRange | None


@dataclass(frozen=True)
class Chunk:
    """One backfill chunk: whole windows, and the stats of the trades in them."""

    window_range: Range
    stats: TradeStats


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
    pending_trades: int = 0
    """Trades appended since the watermark that are left for the next runs (bounded catch-up)."""
    windows_recomputed: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    revised: int = 0
    """Updated candles that had been published after their window closed (late trades)."""
    revisions: pa.Table | None = None
    """Those candles' keys with ``old_``/``new_`` values (at most ``MAX_REVISIONS_KEPT``)."""
    candle_snapshot_id: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def written(self) -> bool:
        return self.inserted + self.updated > 0


def refresh_candles(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    *,
    now: datetime | None = None,
    lookback: timedelta | None = None,
    computed_at: datetime | None = None,
    branch: str | None = None,
    max_new_trades: int | None = None,
    market: Market = UTC_MARKET,
) -> RunResult:
    """Incremental (1m, 5m) or batch (30m, 1h, 1d) run: recompute and MERGE affected windows.

    The recomputed windows are those of the lookback (``lookback_range``) plus every window
    touched by trades appended since the candle table's watermark. The new watermark commits in
    the same snapshot as the candles.

    If a snapshot the watermark refers to was expired (by anything but this project's
    maintenance, which keeps them), the trades appended since cannot be told apart: the run
    says so in its notes and recomputes every window of the trades' history, in bounded steps.

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
        max_new_trades: process at most this many newly appended trades (None: all); the
            rest is caught up by the next runs.
        market: instrument calendars and gap policies (default: UTC, no gap fill).
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
        max_new_trades=max_new_trades,
        market=market,
    )


def recompute(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    window_range: Range,
    *,
    computed_at: datetime | None = None,
    branch: str | None = None,
    trades_snapshot: int | None = None,
    completes: Range | None = None,
    stats: TradeStats | None = None,
    market: Market = UTC_MARKET,
) -> RunResult:
    """Recompute every window of ``window_range`` (one backfill chunk); keep the watermark.

    Args:
        trades_snapshot: read the trades of this snapshot (default: the current one). A
            backfill pins all its chunks to one snapshot.
        completes: this chunk is the last of a backfill of ``completes`` at
            ``trades_snapshot``. On a table that has never recorded a watermark, when every
            trade of that snapshot lies in ``completes``, the chunk records the snapshot as the
            watermark: the next incremental run then reads only trades appended after it.
        stats: the trades of ``window_range`` at ``trades_snapshot``, when already counted
            (:func:`plan_chunks`); saves the run counting them itself.
    """
    return _run(
        spark,
        tables,
        tf,
        [window_range],
        advance_watermark=False,
        computed_at=computed_at,
        branch=branch,
        trades_snapshot=trades_snapshot,
        completes=completes,
        stats=stats,
        first_fill=True,
        market=market,
    )


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
    their trades fit ``chunk_trades`` (a slot is never split). The chunks tile the range, gaps
    included, and each knows its trade count and trade_id range.
    """
    if chunk_trades < 1:
        raise ValueError(f"chunk_trades must be at least 1, got {chunk_trades}")
    whole = Range(align_down(start, tf), align_up(end, tf))
    slot_us = max(tf.width_us, 3_600_000_000)
    slot = F.unix_micros(F.col("ts")) - F.pmod(F.unix_micros(F.col("ts")), F.lit(slot_us))
    rows = (
        spark.read.option("versionAsOf", trades_snapshot)
        .table(tables.trades)
        .where(in_ranges(F.col("ts"), [whole]))
        .groupBy(slot.alias("slot"))
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.min("trade_id").alias("low"),
            F.max("trade_id").alias("high"),
        )
        .orderBy("slot")
        .collect()
    )
    chunks: list[Chunk] = []
    cursor = whole.start
    n, low, high = 0, None, None
    for i, row in enumerate(rows):
        n, low, high = (
            n + int(row["n"]),
            int(row["low"]) if low is None else min(low, int(row["low"])),
            int(row["high"]) if high is None else max(high, int(row["high"])),
        )
        following = rows[i + 1] if i + 1 < len(rows) else None
        if following is not None and n + int(following["n"]) <= chunk_trades:
            continue
        cut = whole.end if following is None else max(from_us(int(following["slot"])), cursor)
        if cut > cursor:
            ids = TradeIdRange(low, high) if low is not None and high is not None else None
            chunks.append(Chunk(Range(cursor, cut), TradeStats(n, ids)))
            cursor = cut
        n, low, high = 0, None, None
    if cursor < whole.end or not chunks:
        chunks.append(Chunk(Range(cursor, whole.end), TradeStats(0, None)))
    return chunks


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
    max_new_trades: int | None = None,
    trades_snapshot: int | None = None,
    completes: Range | None = None,
    stats: TradeStats | None = None,
    first_fill: bool = False,
    market: Market = UTC_MARKET,
) -> RunResult:
    table = tables.candles(tf)
    calendars = market.calendars
    target = on_branch(table, branch)
    before = progress(spark, table)
    present: set[int] | None = None
    if trades_snapshot:
        current: int | None = trades_snapshot
    elif advance_watermark:
        # The plan asks whether the snapshots the progress names still exist: in the same query.
        current, present = head_and_existing(spark, tables.trades, before.snapshots())
    else:
        current = main_snapshot_id(spark, tables.trades)
    result = RunResult(tf.name, ranges, current, before.watermark, before.watermark)
    if current is None:
        result.notes.append("trades is empty")
        return result

    after = before
    if advance_watermark:
        late, after = _plan(
            spark, tables, tf, before, current, result, late_before, max_new_trades, present
        )
        ranges = ranges + late
    elif completes is not None and before == Progress():
        after = _sealed(spark, tables, current, completes, result)
    result.ranges = coalesce_ranges(ranges)
    if market.fills_gaps(tf):
        # One span: a changed candle changes the synthetic candles after it, up to the next
        # real one, so everything from the oldest touched window on is recomputed.
        result.ranges = [Range(result.ranges[0].start, result.ranges[-1].end)]
    wanted = read = result.ranges
    if not calendars.all_utc:
        # The plan is on the UTC grid; a local window overlapping it (a 25-hour day, a window
        # at :30) must be recomputed from all its trades: read one longest window more on each
        # side, and keep only the windows that overlap the plan. Their starts lie from one
        # longest window before the plan to its end: the ranges the run reports (validation
        # reads the windows starting there).
        margin = calendars.max_window(tf)
        read = coalesce_ranges([Range(r.start - margin, r.end + margin) for r in wanted])
        result.ranges = coalesce_ranges([Range(r.start - margin, r.end) for r in wanted])

    # Pin the read to one snapshot: an append landing mid-run must not slip in under a
    # watermark that does not cover it.
    trades = (
        spark.read.option("versionAsOf", current)
        .table(tables.trades)
        .where(in_ranges(F.col("ts"), read))
    )
    if stats is None or not calendars.all_utc:
        # (a chunk's counted trades are those of its UTC-grid range: local windows read more)
        stats = _trade_stats(trades)
    result.trades_read = stats.trades
    if result.trades_read == 0:
        _record_progress(spark, table, branch, before, after, result)
        return result

    stamp = computed_at or datetime.now(UTC)
    real = candles(trades, tf, stats.trade_ids, calendars, max_trades=stats.trades)
    if not calendars.all_utc:
        real = real.where(overlapping(F.col("window_start"), F.col("window_end"), wanted))
    with ExitStack() as held:
        fresh = real
        if market.fills_gaps(tf):
            # Filling gaps uses the real candles four times (their symbols, their bounds, their
            # closes, and themselves): cached, the span's trades are aggregated once, not four.
            real = held.enter_context(_cached(real))
            fresh = _with_gaps_filled(
                spark, tables, tf, target, real, wanted[0], current, market, result
            )
        fresh = fresh.withColumn("computed_at", F.lit(stamp))
        existing = spark.read.table(target).where(in_ranges(F.col("window_start"), result.ranges))
        if first_fill and existing.isEmpty():
            _write_first_fill(spark, table, branch, fresh, result, after)
            return result
        compared = _compare(fresh, existing)
        if not market.fills_gaps(tf) and stats.trades <= COLLECTED_CANDLES_MAX:
            # (every candle holds a trade of the read: there are at most as many as trades)
            collected = _to_arrow(compared)
            _diff_collected(collected, result)
            if not result.written:
                _record_progress(spark, table, branch, before, after, result)
                return result
            _merge_collected(spark, target, collected, after)
            result.candle_snapshot_id = branch_snapshot_id(spark, table, branch or "main")
            result.watermark = after.watermark
            return result
        compared = held.enter_context(_cached(compared))
        groups = _count_changes(compared, result)
        if not result.written:
            _record_progress(spark, table, branch, before, after, result)
            return result
        if result.revised:
            result.revisions = _revisions(compared, result)
        _write_changes(spark, target, compared, groups, after)
    result.candle_snapshot_id = branch_snapshot_id(spark, table, branch or "main")
    result.watermark = after.watermark
    return result


@contextmanager
def _cached(frame: DataFrame) -> Iterator[DataFrame]:
    """``frame`` cached for the block, unpersisted after it whatever happens.

    Cached, not localCheckpoint(): with several Connect sessions in one process, pyspark 4.1
    binds the checkpointed DataFrame to SparkSession.active(), which may be another one.
    """
    cached = frame.cache()
    try:
        yield cached
    finally:
        cached.unpersist()


def _trade_stats(trades: DataFrame) -> TradeStats:
    row = trades.agg(
        F.count(F.lit(1)).alias("n"),
        F.min("trade_id").alias("low"),
        F.max("trade_id").alias("high"),
    ).collect()[0]
    n = int(row["n"])
    return TradeStats(n, TradeIdRange(int(row["low"]), int(row["high"])) if n else None)


def _write_first_fill(
    spark: SparkSession,
    table: str,
    branch: str | None,
    fresh: DataFrame,
    result: RunResult,
    after: Progress,
) -> None:
    """Write the candles of windows that hold none yet, in one pass, with ``after``.

    An overwrite of exactly the run's windows, not an append: should another writer have
    filled some of them meanwhile, their candles are replaced (or the commit fails on a file
    that straddles the range), never duplicated. The count comes from the commit's summary.
    """
    target = on_branch(table, branch)
    options = {f"snapshot-property.{k}": v for k, v in after.properties().items()}
    fresh.writeTo(target).options(**options).overwrite(
        in_ranges(F.col("window_start"), result.ranges)
    )
    snapshot = branch_snapshot_id(spark, table, branch or "main")
    assert snapshot is not None
    summary = snapshot_summary(spark, table, snapshot)
    result.inserted = result.windows_recomputed = int(summary.get("added-records", 0))
    result.candle_snapshot_id = snapshot
    result.watermark = after.watermark
    result.notes.append("first fill: no stored candle in these windows, written without a diff")


# Plan ----------------------------------------------------------------------------------------


def _plan(
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


def _sealed(
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


# Gap fill ------------------------------------------------------------------------------------

_KEYS = ["exchange", "symbol"]
_INSTRUMENTS = StructType(
    [StructField("exchange", StringType()), StructField("symbol", StringType())]
)
_SEEDS = StructType(
    [
        *_INSTRUMENTS.fields,
        StructField("_seed_end", LongType()),
        StructField("_seed_close", DecimalType(18, 8)),
    ]
)


def _with_gaps_filled(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    target: str,
    real: DataFrame,
    span: Range,
    trades_snapshot: int,
    market: Market,
    result: RunResult,
) -> DataFrame:
    """``real`` plus the synthetic candles of gap policy ``previous_close`` over ``span``.

    The first windows' previous close is the close of the symbol's last stored candle before
    the span (a synthetic one carries the close it was filled with). When that candle is not
    right before the span (the symbol had stopped trading, so the windows after it were not
    filled: no later trade was known), the fill starts right after it, and ``result.ranges``
    grows to cover those windows. They hold no trade: a trade would have a candle there, or,
    not yet processed, be in the plan.
    """
    later_rows = (
        spark.read.option("versionAsOf", trades_snapshot)
        .table(tables.trades)
        .where(F.col("ts") >= F.lit(span.end))
        .select(*_KEYS)
        .distinct()
        .collect()
    )
    later = {(r["exchange"], r["symbol"]) for r in later_rows}
    need = later | {(r["exchange"], r["symbol"]) for r in real.select(*_KEYS).distinct().collect()}
    if not need:
        return real
    stored = spark.read.table(target)
    # Usually the candle right before the span exists (gaps are filled): a pruned read finds it.
    near = stored.where(F.col("window_start") >= F.lit(span.start - 2 * tf.width))
    seeds = _last_candles(near, span.start)
    missing = sorted(need - seeds.keys())
    if missing:
        symbols = spark.createDataFrame(missing, schema=_INSTRUMENTS)
        seeds.update(_last_candles(stored.join(symbols, _KEYS, "left_semi"), span.start))
    seeds = {k: v for k, v in seeds.items() if k in need}
    if seeds:
        first = from_us(min(end for end, _ in seeds.values()))
        if first < result.ranges[0].start:
            result.ranges = coalesce_ranges([Range(first, result.ranges[0].start), *result.ranges])
    synthetic = synthetic_candles(
        real,
        spark.createDataFrame(
            [(e, s, end, close) for (e, s), (end, close) in seeds.items()], _SEEDS
        ),
        spark.createDataFrame(sorted(later), schema=_INSTRUMENTS),
        tf,
        to_us(span.end),
        market.calendars,
    )
    return real.unionByName(synthetic)


def _last_candles(candles: DataFrame, before: datetime) -> dict[tuple[str, str], tuple[int, Any]]:
    """Per (exchange, symbol): (window_end in epoch us, close) of its last candle ending at or
    before ``before``."""
    rows = (
        candles.where(F.col("window_end") <= F.lit(before))
        .groupBy(*_KEYS)
        .agg(
            F.max(F.unix_micros("window_end")).alias("end"),
            F.max_by("close", "window_start").alias("close"),
        )
        .collect()
    )
    return {(r["exchange"], r["symbol"]): (int(r["end"]), r["close"]) for r in rows}


# Diff ----------------------------------------------------------------------------------------


def _compare(fresh: DataFrame, existing: DataFrame) -> DataFrame:
    """Label each fresh candle insert / update / unchanged against the stored one, and flag
    the updates that revise a candle published after its window closed (``_revision``; a
    candle published while its window was open is expected to grow), keeping the old values."""
    stored = existing.select(
        *[F.col(c).alias(f"_old_{c}") for c in (*CANDLE_KEY, *REVISED_COLUMNS)]
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
    revision = (change == F.lit("update")) & (
        stored["_old_computed_at"] >= stored["_old_window_end"]
    )
    return fresh.join(stored, on, "left").select(
        *CANDLE_COLUMNS,
        "computed_at",
        change.alias("_change"),
        F.coalesce(revision, F.lit(False)).alias("_revision"),
        *[stored[f"_old_{c}"] for c in REVISED_COLUMNS],
    )


def _count_changes(compared: DataFrame, result: RunResult) -> dict[str, Row]:
    """Counts per change into ``result``, in one pass that also gives each change's bounds."""
    groups = {
        r["_change"]: r
        for r in compared.groupBy("_change")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.min("window_start").alias("lo"),
            F.max("window_start").alias("hi"),
            F.sum(F.col("_revision").cast("long")).alias("revised"),
        )
        .collect()
    }
    counts = {change: int(r["n"]) for change, r in groups.items()}
    result.inserted = counts.get("insert", 0)
    result.updated = counts.get("update", 0)
    result.unchanged = counts.get("unchanged", 0)
    result.windows_recomputed = result.inserted + result.updated + result.unchanged
    result.revised = sum(int(r["revised"] or 0) for r in groups.values())
    return groups


def _note_revisions_kept(result: RunResult) -> None:
    if result.revised > MAX_REVISIONS_KEPT:
        result.notes.append(
            f"{result.revised} candles revised; the first {MAX_REVISIONS_KEPT} (oldest windows "
            "first) are recorded in candle_revisions"
        )


def _revisions(compared: DataFrame, result: RunResult) -> pa.Table:
    """The revised candles: key, then ``old_<c>`` and ``new_<c>`` for each revised column.

    Arrow, not Rows: collected timestamps would come back naive, in local time.
    """
    _note_revisions_kept(result)
    pairs = [
        column
        for c in REVISED_COLUMNS
        for column in (F.col(f"_old_{c}").alias(f"old_{c}"), F.col(c).alias(f"new_{c}"))
    ]
    return (
        compared.where(F.col("_revision"))
        .select(*CANDLE_KEY, *pairs)
        .orderBy("window_start", "exchange", "symbol")
        .limit(MAX_REVISIONS_KEPT)
        .toArrow()
    )


# A scheduled run's few windows: the diff in the client --------------------------------------

COLLECTED_CANDLES_MAX = 50_000
"""A run that read at most this many trades (so computed at most this many candles) takes its
diff into the client (:func:`_diff_collected`); a larger one is counted and merged on the
server from a cached frame."""


def _to_arrow(frame: DataFrame) -> pa.Table:
    """``frame.toArrow()``, without the schema request Spark Connect's toArrow sends first.

    pyspark 4.1's Connect ``toArrow`` asks the server for the schema (planning the whole query,
    a round trip) only to cast the result to the Arrow schema it already arrives in.
    """
    to_table = getattr(frame, "_to_table", None)
    if to_table is None:  # a classic session
        return frame.toArrow()
    table, _ = to_table()
    return table


def _diff_collected(compared: pa.Table, result: RunResult) -> None:
    """:func:`_count_changes` and :func:`_revisions` on the diff taken into the client.

    The same figures from the same rows: a scheduled run's diff is a few hundred candles, and
    counting them on the server, caching them for the MERGE and reading the revisions back
    cost a round trip each (and a cache) where one collect brings them all.
    """
    changes = compared.column("_change").to_pylist()
    result.inserted = changes.count("insert")
    result.updated = changes.count("update")
    result.unchanged = changes.count("unchanged")
    result.windows_recomputed = len(changes)
    revised = compared.filter(compared.column("_revision"))
    result.revised = revised.num_rows
    if not result.revised:
        return
    _note_revisions_kept(result)
    sources = [*CANDLE_KEY, *(name for c in REVISED_COLUMNS for name in (f"_old_{c}", c))]
    names = [*CANDLE_KEY, *(name for c in REVISED_COLUMNS for name in (f"old_{c}", f"new_{c}"))]
    pairs = revised.select(sources).rename_columns(names)
    order = [("window_start", "ascending"), ("exchange", "ascending"), ("symbol", "ascending")]
    result.revisions = pairs.sort_by(order).slice(0, MAX_REVISIONS_KEPT)


def _merge_collected(spark: SparkSession, target: str, compared: pa.Table, after: Progress) -> None:
    """:func:`_write_changes` from the diff in the client: its changed rows travel with the
    MERGE (a local relation), with the progress in the snapshot summary."""
    change = compared.column("_change")
    changed = compared.filter(pc.not_equal(change, "unchanged")).select(
        [*CANDLE_COLUMNS, "computed_at"]
    )
    starts = pc.min_max(changed.column("window_start")).as_py()
    _merge(
        spark,
        target,
        spark.createDataFrame(changed),
        (starts["min"], starts["max"]),
        after.properties(),
    )


# Write ---------------------------------------------------------------------------------------


def _write_changes(
    spark: SparkSession,
    target: str,
    compared: DataFrame,
    groups: dict[str, Row],
    after: Progress,
) -> None:
    """MERGE the inserted and updated candles, with the progress in the snapshot summary."""
    changed = compared.where(F.col("_change") != "unchanged").select(*CANDLE_COLUMNS, "computed_at")
    written = [groups[c] for c in ("insert", "update") if c in groups]
    bounds = (min(r["lo"] for r in written), max(r["hi"] for r in written))
    _merge(spark, target, changed, bounds, after.properties())


def _record_progress(
    spark: SparkSession,
    table: str,
    branch: str | None,
    before: Progress,
    after: Progress,
    result: RunResult,
) -> None:
    """Commit ``after`` without touching a candle (an empty append), if it moved."""
    if after == before:
        return
    target = on_branch(table, branch)
    options = {f"snapshot-property.{k}": v for k, v in after.properties().items()}
    spark.read.table(target).limit(0).writeTo(target).options(**options).append()
    result.candle_snapshot_id = branch_snapshot_id(spark, table, branch or "main")
    result.watermark = after.watermark


def _merge(
    spark: SparkSession,
    target: str,
    changed: DataFrame,
    bounds: tuple[datetime, datetime],
    properties: dict[str, str],
) -> None:
    """MERGE changed candles (window starts within ``bounds``) into ``target``: replace, insert.

    ``changed`` travels inside the MERGE's own request (Spark Connect's SQL with relations),
    not as a temporary view created and dropped around it: two round trips fewer.
    """
    args: dict[str, Any] = {"target": target, "lo": bounds[0], "hi": bounds[1]}
    # No value is formatted into the text: ``{changed}`` names the DataFrame passed with the
    # query, values travel as parameters.
    query = """
        MERGE INTO IDENTIFIER(:target) AS t
        USING {changed} AS s
        ON t.exchange = s.exchange AND t.symbol = s.symbol AND t.window_start = s.window_start
           AND t.window_start BETWEEN :lo AND :hi
        WHEN MATCHED THEN UPDATE SET *
        WHEN NOT MATCHED THEN INSERT *
    """
    with snapshot_properties(spark, properties):
        spark.sql(query, args=args, changed=changed)
