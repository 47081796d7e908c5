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

The steps live in their own modules: :mod:`spark_jobs.plan` (which windows, the watermark),
:mod:`spark_jobs.gap_fill`, :mod:`spark_jobs.diff` and :mod:`spark_jobs.write`; this module
runs them (:func:`refresh_candles`, :func:`recompute`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.calendars import UTC_MARKET, Market
from core.ranges import Range, coalesce_ranges, lookback_range
from core.tables import Tables
from core.timeframes import Timeframe
from spark_jobs.candles import candles
from spark_jobs.diff import (
    COLLECTED_CANDLES_MAX,
    compare,
    count_changes,
    diff_collected,
    revised_candles,
    to_arrow,
)
from spark_jobs.gap_fill import with_gaps_filled
from spark_jobs.plan import (
    TradeStats,
    plan_new_trades,
    trade_stats,
    watermark_after_backfill,
)
from spark_jobs.reads import in_ranges, on_branch, overlapping
from spark_jobs.results import RunResult
from spark_jobs.rollup import ChunkAggregate
from spark_jobs.snapshots import (
    Progress,
    branch_snapshot_id,
    head_and_existing,
    main_snapshot_id,
    progress,
)
from spark_jobs.write import merge_collected, record_progress, write_changes, write_first_fill


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
    source: ChunkAggregate | None = None,
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
            (:func:`spark_jobs.plan.plan_chunks`); saves the run counting them itself.
        source: the chunk's trades already aggregated (a backfill of several timeframes):
            the candles are rolled up from its 1m state instead of aggregated from the trades
            again; it fixes the trades snapshot and the stats.
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
        source=source,
    )


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
    source: ChunkAggregate | None = None,
) -> RunResult:
    table = tables.candles(tf)
    calendars = market.calendars
    target = on_branch(table, branch)
    before = progress(spark, table)
    present: set[int] | None = None
    if source is not None:
        current: int | None = source.trades_snapshot
    elif trades_snapshot:
        current = trades_snapshot
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
        late, after = plan_new_trades(
            spark, tables, tf, before, current, result, late_before, max_new_trades, present
        )
        ranges = ranges + late
    elif completes is not None and before == Progress():
        after = watermark_after_backfill(spark, tables, current, completes, result)
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
    if source is not None:
        stats = source.counted()
    elif stats is None or not calendars.all_utc:
        # (a chunk's counted trades are those of its UTC-grid range: local windows read more)
        stats = trade_stats(trades)
    result.trades_read = stats.trades
    if result.trades_read == 0:
        record_progress(spark, table, branch, before, after, result)
        return result

    stamp = computed_at or datetime.now(UTC)
    if source is not None:
        real = source.candles(tf)
        result.source = source
    else:
        real = candles(trades, tf, stats.trade_ids, calendars, max_trades=stats.trades)
    if not calendars.all_utc:
        real = real.where(overlapping(F.col("window_start"), F.col("window_end"), wanted))
    with ExitStack() as held:
        fresh = real
        if market.fills_gaps(tf):
            # Filling gaps uses the real candles four times (their symbols, their bounds, their
            # closes, and themselves): cached, the span's trades are aggregated once, not four.
            real = held.enter_context(_cached(real))
            fresh = with_gaps_filled(
                spark, tables, tf, target, real, wanted[0], current, market, result
            )
        fresh = fresh.withColumn("computed_at", F.lit(stamp))
        existing = spark.read.table(target).where(in_ranges(F.col("window_start"), result.ranges))
        if first_fill and existing.isEmpty():
            write_first_fill(spark, table, branch, fresh, result, after)
            return result
        compared = compare(fresh, existing)
        if not market.fills_gaps(tf) and stats.trades <= COLLECTED_CANDLES_MAX:
            # (every candle holds a trade of the read: there are at most as many as trades)
            collected = to_arrow(compared)
            diff_collected(collected, result)
            if not result.written:
                record_progress(spark, table, branch, before, after, result)
                return result
            merge_collected(spark, target, collected, after)
            result.candle_snapshot_id = branch_snapshot_id(spark, table, branch or "main")
            result.watermark = after.watermark
            return result
        compared = held.enter_context(_cached(compared))
        groups = count_changes(compared, result)
        if not result.written:
            record_progress(spark, table, branch, before, after, result)
            return result
        if result.revised:
            result.revisions = revised_candles(compared, result)
        write_changes(spark, target, compared, groups, after)
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
