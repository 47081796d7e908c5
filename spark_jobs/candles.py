"""Pure candle logic: DataFrame -> DataFrame, identical on Spark Connect and classic sessions.

Open and close are the prices of the first and last trade ordered by (ts, trade_id). They come
from ``min_by``/``max_by`` over an ordering key, never ``orderBy`` + ``first``/``last`` (Spark does
not keep a sort order through an aggregation, SPARK-53060). The key is a struct (ts, trade_id),
which is always exact but forces a sort-based aggregation, or, when the caller proves that the
trade ids fit, a packed 64-bit integer that orders the same way and lets Spark hash-aggregate
(about 2x faster on 10 M trades here).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from core.tables import PRICE, QUOTE_VOLUME, VOLUME
from core.timeframes import Timeframe

PRICE_SQL = str(PRICE)
VOLUME_SQL = str(VOLUME)
QUOTE_VOLUME_SQL = str(QUOTE_VOLUME)

CANDLE_COLUMNS = (
    "exchange",
    "symbol",
    "window_start",
    "window_end",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trade_count",
    "vwap",
    "open_ts",
    "close_ts",
)


@dataclass(frozen=True)
class TradeIdRange:
    """Smallest and largest trade_id of the trades being aggregated (inclusive)."""

    low: int
    high: int


def window_start_us(ts: Column, tf: Timeframe) -> Column:
    """Microseconds since the epoch of the start of the UTC-aligned window holding ``ts``."""
    micros = F.unix_micros(ts)
    return micros - F.pmod(micros, F.lit(tf.width_us))


def vwap(quote_volume: Column, volume: Column) -> Column:
    """DECIMAL(38,16) / DECIMAL(28,8) is typed DECIMAL(38,8): cast half-up to the price scale."""
    return (quote_volume / volume).cast(PRICE_SQL)


def packed_key_bits(tf: Timeframe) -> int:
    """Bits left for (trade_id - low) once a window's microsecond offset is stored above them."""
    return 63 - (tf.width_us - 1).bit_length()


def _ordering_key(tf: Timeframe, window_us: Column, ids: TradeIdRange | None) -> Column:
    if ids is None or ids.high - ids.low >= 1 << packed_key_bits(tf):
        return F.struct(F.col("ts"), F.col("trade_id"))
    # offset * 2^bits + (trade_id - low) sorts exactly like (ts, trade_id) within one window,
    # because offset < width and 0 <= trade_id - low < 2^bits. A row outside the promised id
    # range would break that, so it fails the query instead of producing a wrong candle.
    relative = F.col("trade_id") - F.lit(ids.low)
    checked = F.when(
        (F.col("trade_id") < F.lit(ids.low)) | (F.col("trade_id") > F.lit(ids.high)),
        F.raise_error(F.lit(f"trade_id outside the promised range [{ids.low}, {ids.high}]")),
    ).otherwise(relative)
    offset = F.unix_micros(F.col("ts")) - window_us
    return F.shiftleft(offset, packed_key_bits(tf)) + checked


def candles(trades: DataFrame, tf: Timeframe, trade_ids: TradeIdRange | None = None) -> DataFrame:
    """Aggregate trades into one candle per (exchange, symbol, window).

    Args:
        trades: rows with exchange, symbol, trade_id, price, quantity, ts.
        tf: the timeframe; windows are [start, start + width), aligned to the UTC epoch.
        trade_ids: the exact trade_id range of ``trades``, if known. It only selects the faster
            packed ordering key; results are identical with or without it.

    Returns:
        The columns of ``CANDLE_COLUMNS`` (without ``computed_at``), typed as the candle tables.
    """
    window_us = window_start_us(F.col("ts"), tf)
    # The key is computed once per row in a projection, not once per aggregate function.
    keyed = trades.select(
        "exchange",
        "symbol",
        "price",
        "quantity",
        "ts",
        window_us.alias("_window_us"),
        _ordering_key(tf, window_us, trade_ids).alias("_key"),
    )
    aggregated = keyed.groupBy("exchange", "symbol", "_window_us").agg(
        F.min_by("price", "_key").alias("open"),
        F.max("price").alias("high"),
        F.min("price").alias("low"),
        F.max_by("price", "_key").alias("close"),
        F.sum("quantity").cast(VOLUME_SQL).alias("volume"),
        F.sum(F.col("price") * F.col("quantity")).cast(QUOTE_VOLUME_SQL).alias("quote_volume"),
        F.count(F.lit(1)).alias("trade_count"),
        F.min("ts").alias("open_ts"),
        F.max("ts").alias("close_ts"),
    )
    return aggregated.select(
        "exchange",
        "symbol",
        F.timestamp_micros(F.col("_window_us")).alias("window_start"),
        F.timestamp_micros(F.col("_window_us") + F.lit(tf.width_us)).alias("window_end"),
        "open",
        "high",
        "low",
        "close",
        "volume",
        "quote_volume",
        "trade_count",
        vwap(F.col("quote_volume"), F.col("volume")).alias("vwap"),
        "open_ts",
        "close_ts",
    )
