"""Gap fill: the synthetic candles of gap policy ``previous_close`` for a run's span."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DecimalType, LongType, StringType, StructField, StructType

from core.calendars import Market
from core.ranges import Range, coalesce_ranges
from core.tables import DECIMAL_PRECISION, DECIMAL_SCALE, Tables
from core.time import from_us, to_us
from core.timeframes import Timeframe
from spark_jobs.candles import synthetic_candles
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
