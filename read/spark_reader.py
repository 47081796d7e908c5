"""Reading candles on a Spark session: a lazy DataFrame, for ranges too large for memory, and
the live tail (:mod:`spark_jobs.live`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from core.tables import Tables
from read.as_of import snapshot_as_of
from read.filters import spark_filter
from read.query import CandleQuery
from read.shape import candle_arrow_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from core.calendars import Calendars


def spark_snapshot_as_of(spark: SparkSession, table: str, as_of: datetime) -> int:
    """:func:`snapshot_as_of` from the table's ``history`` metadata table."""
    from pyspark.sql import functions as F

    rows = (
        spark.read.table(f"{table}.history")
        .select((F.unix_micros("made_current_at") / 1000).cast("long").alias("ms"), "snapshot_id")
        .orderBy("ms")
        .collect()
    )
    return snapshot_as_of([(int(r["ms"]), int(r["snapshot_id"])) for r in rows], as_of, table)


def candles_frame(
    spark: SparkSession,
    tables: Tables,
    query: CandleQuery,
    calendars: Calendars | None = None,
) -> DataFrame:
    """The query on a Spark session: a lazy DataFrame in the result's columns (unsorted).

    With ``query.live``, published candles whose trades changed since the last publication
    are replaced by their recomputation (``provisional`` True), and windows not published yet
    are added; see :func:`spark_jobs.live.live_candles` (``calendars``: the instruments'
    calendars it recomputes with, default UTC).
    """
    from pyspark.sql import functions as F

    table = tables.candles(query.tf)
    if query.live:
        from spark_jobs.live import live_candles

        return live_candles(
            spark,
            tables,
            query.tf,
            symbols=query.symbols,
            exchange=query.exchange,
            start=query.start,
            end=query.end,
            calendars=calendars,
        )
    reader = spark.read
    if query.as_of is not None:
        reader = reader.option("versionAsOf", spark_snapshot_as_of(spark, table, query.as_of))
    frame = reader.table(table).where(spark_filter(query))
    # A table not upgraded yet (no trading_date / synthetic) still reads: those come back null.
    return frame.select(
        *(
            F.col(f.name)
            if f.name in frame.columns
            else F.lit(None).cast(_SPARK_TYPES[f.name]).alias(f.name)
            for f in candle_arrow_schema()
        )
    )


_SPARK_TYPES = {"trading_date": "date", "synthetic": "boolean"}
"""Spark types of the candle columns added after the first release."""
