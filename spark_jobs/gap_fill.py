"""Gap fill: the synthetic candles of gap policy ``previous_close`` for a run's span."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DecimalType, LongType, StringType, StructField, StructType

from core.calendars import Calendars, Market
from core.ranges import Range, coalesce_ranges
from core.tables import DECIMAL_PRECISION, DECIMAL_SCALE, Tables
from core.time import from_us, to_us
from core.timeframes import Timeframe
from spark_jobs.candles import PRICE_SQL, QUOTE_VOLUME_SQL, VOLUME_SQL, windows
from spark_jobs.results import RunResult

_KEYS = ["exchange", "symbol"]
_INSTRUMENTS = StructType(
    [StructField("exchange", StringType()), StructField("symbol", StringType())]
)
_SEEDS = StructType(
    [
        *_INSTRUMENTS.fields,
        StructField("_seed_end", LongType()),
        StructField("_seed_close", DecimalType(DECIMAL_PRECISION, DECIMAL_SCALE)),
    ]
)


def with_gaps_filled(
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


def synthetic_candles(
    real: DataFrame,
    seeds: DataFrame,
    later: DataFrame,
    tf: Timeframe,
    span_end_us: int,
    calendars: Calendars | None = None,
) -> DataFrame:
    """The candles gap policy ``previous_close`` adds: one per window without trades between a
    symbol's candles, flat at the previous close, volume 0, trade_count 0, ``synthetic`` true.

    Args:
        real: real candles of windows overlapping the span being recomputed.
        seeds: per (exchange, symbol), the last stored candle before the span: ``_seed_end``
            (its window_end, epoch us) and ``_seed_close``. Its close carries forward.
        later: (exchange, symbol) of symbols with trades after the span: the windows up to the
            span's end are between two trades too.
        tf: a timeframe shorter than a day (fixed-width windows).
        span_end_us: end of the span (epoch us).
        calendars: the instruments' calendars (their grids).

    Returns:
        Only the synthetic candles, in ``CANDLE_COLUMNS``.
    """
    width = F.lit(tf.width_us).cast("long")  # sequence() wants one integer type throughout
    keys = ["exchange", "symbol"]
    bounds = (
        real.groupBy(*keys)
        .agg(
            F.min(F.unix_micros("window_start")).alias("_first"),
            F.max(F.unix_micros("window_start")).alias("_last"),
        )
        .join(seeds, keys, "full_outer")
        .join(later.select(*keys, F.lit(True).alias("_later")), keys, "left")
    )
    # The last window of each instrument's own grid that overlaps the span.
    last_in_span = windows(F.timestamp_micros(F.lit(span_end_us - 1)), tf, calendars)[0]
    lo = F.coalesce(F.col("_seed_end"), F.col("_first"))
    hi = F.when(F.col("_later"), last_in_span).otherwise(F.col("_last"))
    grid = bounds.where(lo.isNotNull() & hi.isNotNull() & (lo <= hi)).select(
        *keys, F.explode(F.sequence(lo, hi, width)).alias("_ws")
    )
    real_marks = real.select(
        *keys, F.unix_micros("window_start").alias("_ws"), F.col("close").alias("_close")
    )
    empty = grid.join(real_marks.select(*keys, "_ws"), [*keys, "_ws"], "left_anti")
    marks = real_marks.unionByName(
        seeds.select(
            *keys, (F.col("_seed_end") - width).alias("_ws"), F.col("_seed_close").alias("_close")
        )
    ).unionByName(empty.withColumn("_close", F.lit(None).cast(PRICE_SQL)))
    # Window starts are unique per symbol, so "the last close before" is deterministic.
    before = Window.partitionBy(*keys).orderBy("_ws").rowsBetween(Window.unboundedPreceding, 0)
    filled = marks.withColumn("_prev", F.last("_close", ignorenulls=True).over(before)).where(
        F.col("_close").isNull() & F.col("_prev").isNotNull()
    )
    day = windows(F.timestamp_micros(F.col("_ws")), tf, calendars)[2]
    prev = F.col("_prev").cast(PRICE_SQL)
    return filled.select(
        *keys,
        F.timestamp_micros(F.col("_ws")).alias("window_start"),
        F.timestamp_micros(F.col("_ws") + width).alias("window_end"),
        prev.alias("open"),
        prev.alias("high"),
        prev.alias("low"),
        prev.alias("close"),
        F.lit(0).cast(VOLUME_SQL).alias("volume"),
        F.lit(0).cast(QUOTE_VOLUME_SQL).alias("quote_volume"),
        F.lit(0).cast("long").alias("trade_count"),
        prev.alias("vwap"),
        F.lit(None).cast("timestamp").alias("open_ts"),
        F.lit(None).cast("timestamp").alias("close_ts"),
        day.alias("trading_date"),
        F.lit(True).alias("synthetic"),
    )
