"""The live tail: published candles plus what the next run will publish, computed now.

A candle table's ``main`` reflects the trades of one ``trades`` snapshot, its watermark. Every
trade appended since touches some (exchange, symbol, window): a window after the last
published one, the still-open window published half full, or an older window a late trade
revises. The next run recomputes exactly those windows from all of their trades and writes
the ones that differ. The live tail does the same, now: it recomputes every touched candle
from the trades of the current ``trades`` snapshot with the pipeline's own ``candles``
function, so each provisional candle is the candle the next run publishes (as long as no
trade of its window arrives in between), and it replaces the published candle of that key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from core.calendars import Calendars
from core.ranges import Range, align_up, coalesce_ranges, window_of
from core.tables import CANDLE_KEY, PROVISIONAL, Tables
from core.time import from_us
from core.timeframes import Timeframe
from spark_jobs.candles import CANDLE_COLUMNS, candles, window_start_us, windows
from spark_jobs.reads import in_ranges
from spark_jobs.snapshots import main_snapshot_id, progress_snapshot, snapshot_exists

_COLUMNS = (*CANDLE_COLUMNS, "computed_at", PROVISIONAL)


def live_candles(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    *,
    symbols: Sequence[str] = (),
    exchange: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
    calendars: Calendars | None = None,
) -> DataFrame:
    """Published candles with windows starting in [start, end), each replaced by its
    recomputation when trades of it arrived after the last publication, plus the windows not
    published yet; ``provisional`` says which is which.

    Args:
        symbols: only these (default: all); exchange likewise.
        now: ``computed_at`` of the provisional candles (default: the clock).
        calendars: the instruments' calendars, as the pipeline runs with (default: UTC).
            Provisional candles are real ones: gap policy fills come with the next run.
    """
    table = tables.candles(tf)
    published_at, progress = progress_snapshot(spark, table)
    current = main_snapshot_id(spark, tables.trades)
    reader = spark.read if published_at is None else spark.read.option("versionAsOf", published_at)
    published = reader.table(table).where(
        _in_windows(F.col("window_start"), start, end) & _of(symbols, exchange)
    )
    if current is None or (progress.watermark == current and not progress.catching_up):
        return published.withColumn(PROVISIONAL, F.lit(False)).select(*_COLUMNS)
    if calendars is not None and not calendars.all_utc:
        fresh = _recomputed_local(
            spark, tables, tf, progress.watermark, current, symbols, exchange, start, end, calendars
        )
    else:
        fresh = _recomputed(
            spark, tables, tf, progress.watermark, current, symbols, exchange, start, end
        )
    fresh = fresh.withColumn("computed_at", F.lit(now or datetime.now(UTC)))
    kept = published.join(fresh.select(*CANDLE_KEY), list(CANDLE_KEY), "left_anti")
    return (
        kept.withColumn(PROVISIONAL, F.lit(False))
        .select(*_COLUMNS)
        .unionByName(fresh.withColumn(PROVISIONAL, F.lit(True)).select(*_COLUMNS))
    )


def _recomputed(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    since: int | None,
    current: int,
    symbols: Sequence[str],
    exchange: str | None,
    start: datetime | None,
    end: datetime | None,
) -> DataFrame:
    """Candles of every (exchange, symbol, window) touched by trades appended after ``since``,
    from all trades of those windows in snapshot ``current`` (as a run would compute them)."""
    # A window starts in [start, end) exactly when its trades' ts is in [align_up(start),
    # align_up(end)): a filter on ts prunes the trades' day partitions.
    lo = align_up(start, tf) if start is not None else None
    hi = align_up(end, tf) if end is not None else None
    wanted = _in_windows(F.col("ts"), lo, hi) & _of(symbols, exchange)
    window = window_start_us(F.col("ts"), tf).alias("_w")
    touched = (
        _appended(spark, tables, since, current)
        .where(wanted)
        .select("exchange", "symbol", window)
        .distinct()
    )
    starts = sorted({int(r["_w"]) for r in touched.select("_w").distinct().collect()})
    if not starts:
        return candles(spark.read.table(tables.trades).limit(0), tf)
    ranges = coalesce_ranges([window_of(from_us(w), tf) for w in starts])
    trades = (
        spark.read.option("versionAsOf", current)
        .table(tables.trades)
        .where(wanted & in_ranges(F.col("ts"), ranges))
        .withColumn("_w", window_start_us(F.col("ts"), tf))
        .join(touched, ["exchange", "symbol", "_w"], "left_semi")
        .drop("_w")
    )
    return candles(trades, tf)


def _recomputed_local(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    since: int | None,
    current: int,
    symbols: Sequence[str],
    exchange: str | None,
    start: datetime | None,
    end: datetime | None,
    calendars: Calendars,
) -> DataFrame:
    """:func:`_recomputed` for instruments with local calendars: windows are those of each
    instrument's calendar (their length varies), so they are found and filtered by their
    start, not by the trades' times."""
    w_start, w_end, _ = windows(F.col("ts"), tf, calendars)
    located = (
        _appended(spark, tables, since, current)
        .where(_of(symbols, exchange))
        .select("exchange", "symbol", w_start.alias("_w"), w_end.alias("_e"))
    )
    lo = F.timestamp_micros(F.col("_w"))
    touched = located.where(F.col("_w").isNotNull() & _in_windows(lo, start, end)).distinct()
    spans = touched.select("_w", "_e").distinct().collect()
    if not spans:
        return candles(spark.read.table(tables.trades).limit(0), tf, calendars=calendars)
    ranges = coalesce_ranges([Range(from_us(int(r["_w"])), from_us(int(r["_e"]))) for r in spans])
    trades = (
        spark.read.option("versionAsOf", current)
        .table(tables.trades)
        .where(_of(symbols, exchange) & in_ranges(F.col("ts"), ranges))
        .withColumn("_w", w_start)
        .join(touched.select("exchange", "symbol", "_w"), ["exchange", "symbol", "_w"], "left_semi")
        .drop("_w")
    )
    return candles(trades, tf, calendars=calendars)


def _appended(spark: SparkSession, tables: Tables, since: int | None, until: int) -> DataFrame:
    """Trades appended after snapshot ``since`` up to ``until``; every trade of ``until``
    when nothing was published yet, or when ``since`` was expired (the next run recomputes
    everything then too)."""
    if since is None or not snapshot_exists(spark, tables.trades, since):
        return spark.read.option("versionAsOf", until).table(tables.trades)
    # Incremental reads skip non-append snapshots; trades is append-only by contract.
    return (
        spark.read.option("start-snapshot-id", since)
        .option("end-snapshot-id", until)
        .table(tables.trades)
    )


def _in_windows(column: Column, start: datetime | None, end: datetime | None) -> Column:
    condition = F.lit(True)
    if start is not None:
        condition = condition & (column >= F.lit(start))
    if end is not None:
        condition = condition & (column < F.lit(end))
    return condition


def _of(symbols: Sequence[str], exchange: str | None) -> Column:
    condition = F.lit(True)
    if symbols:
        condition = condition & F.col("symbol").isin(list(symbols))
    if exchange is not None:
        condition = condition & (F.col("exchange") == F.lit(exchange))
    return condition
