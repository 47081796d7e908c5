"""The order of trades within a window: by (ts, trade id), as open and close need it.

A trade id is a number (``trade_id``) or text (``trade_id_text``), exactly one of them set: at
one ts numeric ids come first, in numeric order, then text ids in the order of their UTF-8
bytes (code points). The key is a struct that says exactly that, or, when the caller proves
that every id is a number within a range that fits, a packed 64-bit integer that orders the
same way and lets Spark hash-aggregate (see :mod:`spark_jobs.candles`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

from core.calendars import is_daily
from core.timeframes import Timeframe

TEXT_ID = "trade_id_text"
"""The column of text trade ids (null where the id is a number, in ``trade_id``)."""


@dataclass(frozen=True)
class TradeIdRange:
    """Smallest and largest trade_id of the trades being aggregated (inclusive), when every one
    of them has a numeric id (none a text id)."""

    low: int
    high: int


def packed_key_bits(tf: Timeframe) -> int:
    """Bits left for (trade_id - low) once a window's microsecond offset is stored above them.

    A local day may last 25 hours (a zone that once shifted by two, 26): daily windows reserve
    room for two days.
    """
    longest = 2 * tf.width_us if is_daily(tf) else tf.width_us
    return 63 - (longest - 1).bit_length()


def fits_packed_key(tf: Timeframe, ids: TradeIdRange | None) -> bool:
    """True when ``tf``'s windows can order trades of ``ids`` by a packed 64-bit key."""
    return ids is not None and ids.high - ids.low < 1 << packed_key_bits(tf)


def trade_order(columns: list[str]) -> Column:
    """The struct that orders trades by (ts, trade id): at one ts numeric ids first (numeric
    order), then text ids (byte order). Frames without a ``trade_id_text`` column (numeric ids
    only) get (ts, trade_id), which orders them the same way."""
    if TEXT_ID not in columns:
        return F.struct(F.col("ts"), F.col("trade_id"))
    # The flag puts numeric ids first without relying on where Spark sorts a struct's nulls.
    return F.struct(F.col("ts"), F.col(TEXT_ID).isNotNull(), F.col("trade_id"), F.col(TEXT_ID))


def ordering_key(
    tf: Timeframe, window_us: Column, ids: TradeIdRange | None, columns: list[str]
) -> Column:
    """The key ``min_by``/``max_by`` order a window's trades by: packed when ``ids`` is given
    and fits ``tf``'s bits, else :func:`trade_order` (``columns``: the frame's columns)."""
    if ids is None or not fits_packed_key(tf, ids):
        return trade_order(columns)
    # offset * 2^bits + (trade_id - low) sorts exactly like (ts, trade_id) within one window,
    # because offset < width and 0 <= trade_id - low < 2^bits. A row outside the promised id
    # range (a text id included: its trade_id is null) would break that, so it fails the query
    # instead of producing a wrong candle.
    relative = F.col("trade_id") - F.lit(ids.low)
    checked = F.when(
        F.col("trade_id").isNull()
        | (F.col("trade_id") < F.lit(ids.low))
        | (F.col("trade_id") > F.lit(ids.high)),
        F.raise_error(
            F.lit(f"trade_id null or outside the promised range [{ids.low}, {ids.high}]")
        ),
    ).otherwise(relative)
    offset = F.unix_micros(F.col("ts")) - window_us
    return F.shiftleft(offset, packed_key_bits(tf)) + checked
