"""Reading candles: what ``main`` publishes, as it was at a past time, or with the live tail.

Three ways in, one query (:class:`CandleQuery`) and one result shape (the candle table's
columns, exact decimals, UTC timestamps, sorted by exchange, symbol and window):

- :func:`read_candles` returns a pandas DataFrame. Without a Spark session it reads through
  PyIceberg (no JVM): the window and symbol filters prune partitions and files, so a day of 1m
  candles is a handful of small Parquet reads.
- :func:`candles_frame` is the same query on a Spark session, as a lazy Spark DataFrame, for
  ranges too large for one process's memory.
- ``live=True`` adds the *live tail*: every candle whose trades changed since the table's
  last publication, recomputed from the trades with the pipeline's own ``candles`` function and
  marked ``provisional``. It needs a Spark session (that function is Spark's); see
  :mod:`spark_jobs.live`.
- ``as_of=TIME`` reads the candles ``main`` held at that time, from the table's snapshot
  history (every publish moves ``main``; Iceberg logs when). Maintenance keeps that history for
  ``OHLCV_SNAPSHOT_RETENTION_H`` hours (see :mod:`spark_jobs.maintenance`); an older time
  fails with :class:`AsOfUnavailable`, naming the oldest time still kept.

The query model is :mod:`read.query`, its filter :mod:`read.filters`, the readers
:mod:`read.iceberg_reader` and :mod:`read.spark_reader`; revisions: :mod:`read.revisions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.tables import Tables
from core.timeframes import Timeframe
from read.iceberg_reader import LIVE_NEEDS_SPARK, read_candles_arrow
from read.query import CandleQuery, Instant
from read.shape import normalized, to_pandas
from read.spark_reader import candles_frame

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from pyiceberg.catalog import Catalog
    from pyspark.sql import SparkSession

    from settings import Settings


def read_candles(
    tf: str | Timeframe,
    symbols: str | Sequence[str] | None = None,
    start: Instant | None = None,
    end: Instant | None = None,
    *,
    exchange: str | None = None,
    as_of: Instant | None = None,
    live: bool = False,
    spark: SparkSession | None = None,
    settings: Settings | None = None,
    catalog: Catalog | None = None,
) -> pd.DataFrame:
    """Candles as a pandas DataFrame: one row per (exchange, symbol, window), exact decimals.

    Args:
        tf: ``"1m"``, ``"5m"``, ``"30m"``, ``"1h"`` or ``"1d"``.
        symbols: one symbol or several (default: all).
        start: first window start to include (datetime with a time zone, or ISO-8601 text;
            text without an offset is UTC). Default: the first window.
        end: window starts before this are included. Default: the last window.
        exchange: only this exchange (default: all).
        as_of: the candles as ``main`` published them at this time.
        live: also the live tail (needs ``spark``): candles whose trades changed since the
            last publication, recomputed as the next run will write them, with
            ``provisional`` True (published ones False).
        spark: a session; with one the query runs on Spark (large ranges, ``live``).
        settings: where the tables are (default: ``Settings()``, from the environment).
        catalog: a PyIceberg catalog to reuse (default: opened from ``settings``).

    Returns:
        The candle table's columns (plus ``provisional`` when live), sorted by exchange,
        symbol and window_start; prices as ``decimal.Decimal``, timestamps in UTC.

    Raises:
        ValueError: an unknown timeframe, a start not before the end, a malformed symbol, a
            time that does not parse or has no time zone; ``live`` without ``spark``.
        AsOfUnavailable: ``as_of`` is older than the history kept.
    """
    query = CandleQuery.of(tf, symbols, start, end, exchange=exchange, as_of=as_of, live=live)
    if settings is None:
        from settings import Settings

        settings = Settings()
    return to_pandas(read_candle_table(query, settings, spark=spark, catalog=catalog))


def read_candle_table(
    query: CandleQuery,
    settings: Settings,
    *,
    spark: SparkSession | None = None,
    catalog: Catalog | None = None,
) -> pa.Table:
    """The one read path (:func:`read_candles`, ``ohlcv candles``): the query's candles as an
    Arrow table, on Spark when a session is given (with the instruments' calendars), else
    through PyIceberg (``catalog``, default: opened from ``settings``).

    Raises:
        ValueError: ``query.live`` without ``spark``.
    """
    if query.live and spark is None:
        raise ValueError(LIVE_NEEDS_SPARK)
    if spark is not None:
        tables = Tables(settings.catalog_name, settings.namespace)
        frame = candles_frame(spark, tables, query, settings.market().calendars)
        return normalized(frame.toArrow(), query.live)
    if catalog is None:
        from infra.catalog import open_catalog

        catalog = open_catalog(settings)
    return read_candles_arrow(catalog, settings.namespace, query)
