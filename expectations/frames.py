"""The DataFrames the suites validate: exactly the windows a run wrote, plus derived columns."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.ranges import Range
from core.tables import CANDLE_KEY, Tables
from core.timeframes import Timeframe, rollup_source
from expectations.suites import RECONCILED
from spark_jobs.candles import (
    CANDLE_COLUMNS,
    QUOTE_VOLUME_SQL,
    VOLUME_SQL,
    vwap,
    window_start_us,
)
from spark_jobs.reads import read_candles


def with_window_columns(candles: DataFrame, tf: Timeframe) -> DataFrame:
    """Add ``window_length_us`` and ``window_offset_us`` for the window checks."""
    start = F.unix_micros(F.col("window_start"))
    return candles.withColumns(
        {
            "window_length_us": F.unix_micros(F.col("window_end")) - start,
            "window_offset_us": F.pmod(start, F.lit(tf.width_us)),
        }
    )


def invariant_frame(
    spark: SparkSession, tables: Tables, tf: Timeframe, ranges: Sequence[Range], branch: str | None
) -> DataFrame:
    """The candles a run wrote (its recomputed windows, on its branch), ready for the suite."""
    return with_window_columns(read_candles(spark, tables.candles(tf), ranges, branch), tf)


def rollup(candles: DataFrame, tf: Timeframe) -> DataFrame:
    """Roll smaller candles up into ``tf`` windows, the way the candles themselves are defined."""
    window_us = window_start_us(F.col("window_start"), tf)
    grouped = candles.groupBy("exchange", "symbol", window_us.alias("_w")).agg(
        F.min_by("open", "window_start").alias("open"),
        F.max("high").alias("high"),
        F.min("low").alias("low"),
        F.max_by("close", "window_start").alias("close"),
        F.sum("volume").cast(VOLUME_SQL).alias("volume"),
        F.sum("quote_volume").cast(QUOTE_VOLUME_SQL).alias("quote_volume"),
        F.sum("trade_count").alias("trade_count"),
        F.min("open_ts").alias("open_ts"),
        F.max("close_ts").alias("close_ts"),
    )
    return grouped.withColumns(
        {
            "window_start": F.timestamp_micros(F.col("_w")),
            "window_end": F.timestamp_micros(F.col("_w") + F.lit(tf.width_us)),
            "vwap": vwap(F.col("quote_volume"), F.col("volume")),
        }
    ).select(*CANDLE_COLUMNS)


def reconciliation_frame(
    spark: SparkSession, tables: Tables, tf: Timeframe, ranges: Sequence[Range], branch: str | None
) -> DataFrame | None:
    """Candles a run wrote side by side with the rollup of the smaller timeframe's ``main``.

    A full outer join on the key: ``in_candles`` / ``in_rollup`` flag windows present on one
    side only, ``rollup_<column>`` holds the rolled-up value. None for 1m (nothing smaller).
    """
    source = rollup_source(tf)
    if source is None:
        return None
    written = read_candles(spark, tables.candles(tf), ranges, branch).select(*CANDLE_COLUMNS)
    smaller = read_candles(spark, tables.candles(source), ranges)
    rolled = rollup(smaller, tf).select(
        *CANDLE_KEY,
        *[F.col(c).alias(f"rollup_{c}") for c in RECONCILED],
        F.lit(True).alias("in_rollup"),
    )
    joined = written.withColumn("in_candles", F.lit(True)).join(
        rolled, list(CANDLE_KEY), "full_outer"
    )
    return joined.fillna(False, subset=["in_candles", "in_rollup"])
