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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    In,
    LessThan,
    Reference,
)
from pyiceberg.expressions.literals import literal

from core.tables import CANDLE_KEY, CANDLE_REVISIONS, CANDLE_SCHEMA, REVISIONS_SCHEMA, Tables
from core.time import parse_instant, to_us, utc
from core.timeframes import Timeframe, timeframe

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow.compute as pc
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import DataScan, FileScanTask, Table
    from pyspark.sql import Column, DataFrame, SparkSession

    from core.calendars import Calendars
    from settings import Settings

MAX_SYMBOL_LENGTH = 64  # as ingestion accepts (ingest/rules.py)
PROVISIONAL = "provisional"
"""Column ``live=True`` adds: True for a candle computed from trades not yet published."""

Instant = datetime | str


class AsOfUnavailable(ValueError):
    """``as_of`` is older than the history the table still keeps."""


@dataclass(frozen=True)
class CandleQuery:
    """Which candles to read: windows starting in [start, end) of some symbols.

    Build it with :meth:`of`, which checks every value and says what to pass instead.
    """

    tf: Timeframe
    symbols: tuple[str, ...] = ()
    """Empty: every symbol."""
    start: datetime | None = None
    end: datetime | None = None
    exchange: str | None = None
    as_of: datetime | None = None
    live: bool = False

    @classmethod
    def of(
        cls,
        tf: str | Timeframe,
        symbols: str | Sequence[str] | None = None,
        start: Instant | None = None,
        end: Instant | None = None,
        *,
        exchange: str | None = None,
        as_of: Instant | None = None,
        live: bool = False,
    ) -> CandleQuery:
        query = cls(
            tf=timeframe(tf),
            symbols=_symbols(symbols),
            start=_instant(start, "start"),
            end=_instant(end, "end"),
            exchange=_checked_name(exchange, "exchange") if exchange is not None else None,
            as_of=_instant(as_of, "as_of"),
            live=live,
        )
        if query.start is not None and query.end is not None and query.start >= query.end:
            raise ValueError(
                f"start {query.start.isoformat()} is not before end {query.end.isoformat()}: "
                "pass a start earlier than the end"
            )
        if query.live and query.as_of is not None:
            raise ValueError(
                "as_of and live exclude each other: as_of reads what was published at a past "
                "time, live adds what is not published yet; pass one of them"
            )
        return query

    def describe(self) -> str:
        """The query in a few words, for messages."""
        what = ", ".join(self.symbols) if self.symbols else "all symbols"
        start = self.start.isoformat() if self.start else "the first window"
        end = self.end.isoformat() if self.end else "the last"
        return f"{self.tf} candles of {what} from {start} to {end}"


def _instant(value: Instant | None, name: str) -> datetime | None:
    """An aware UTC datetime from a datetime (naive refused) or ISO-8601 text (no offset: UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_instant(value)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return utc(value)


def _checked_name(value: str, what: str) -> str:
    """A symbol or exchange as ingestion stores it (trimmed, 1-64 characters), else an error."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError(
            f"{what} {value!r} is not a stored {what}: pass the name without surrounding "
            "spaces, e.g. BTC-USD"
        )
    if len(value) > MAX_SYMBOL_LENGTH or not value.isprintable():
        raise ValueError(
            f"{what} {value[:80]!r} is not a stored {what}: names are at most "
            f"{MAX_SYMBOL_LENGTH} printable characters"
        )
    return value


def _symbols(symbols: str | Sequence[str] | None) -> tuple[str, ...]:
    if symbols is None:
        return ()
    if isinstance(symbols, str):
        symbols = [symbols]
    return tuple(dict.fromkeys(_checked_name(s, "symbol") for s in symbols))


# The result shape -------------------------------------------------------------------------


def candle_arrow_schema(live: bool = False) -> pa.Schema:
    """The candle table's columns as Arrow types (decimal128, timestamp[us, UTC])."""
    schema = pa.schema(
        [pa.field(f.name, f.type) for f in CANDLE_SCHEMA.as_arrow()]  # drops field-id metadata
    )
    return schema.append(pa.field(PROVISIONAL, pa.bool_())) if live else schema


def normalized(table: pa.Table, live: bool = False) -> pa.Table:
    """``table`` in the result shape: the candle columns in order, UTC timestamps, sorted."""
    schema = candle_arrow_schema(live)
    for f in schema:
        if f.name not in table.column_names:  # a table not upgraded yet (see _SPARK_TYPES)
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    shaped = table.select(schema.names).cast(schema)
    return shaped.sort_by([(c, "ascending") for c in CANDLE_KEY])


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Decimals stay ``decimal.Decimal`` (exact); timestamps are tz-aware UTC."""
    return table.to_pandas()


# As of ------------------------------------------------------------------------------------


def snapshot_as_of(history: Sequence[tuple[int, int]], as_of: datetime, table: str) -> int:
    """The snapshot ``main`` pointed at at ``as_of``.

    Args:
        history: (epoch milliseconds it became current, snapshot id), oldest first: Iceberg's
            snapshot log, which expiry truncates to the snapshots it keeps.
        as_of: the time.
        table: for the error message.
    """
    at_ms = to_us(as_of) // 1000
    chosen = [sid for ms, sid in history if ms <= at_ms]
    if chosen:
        return chosen[-1]
    if not history:
        raise AsOfUnavailable(f"{table} has never been published: there is nothing to read")
    oldest = datetime.fromtimestamp(history[0][0] / 1000, UTC)
    raise AsOfUnavailable(
        f"as_of {as_of.isoformat()} is before the oldest published state of {table} still "
        f"kept ({oldest.isoformat()}; maintenance expires history older than "
        f"OHLCV_SNAPSHOT_RETENTION_H): pass a time at or after {oldest.isoformat()}"
    )


# PyIceberg --------------------------------------------------------------------------------


def row_filter(query: CandleQuery) -> BooleanExpression:
    """The query as an Iceberg expression: window bounds prune partitions, symbols files."""
    terms: list[BooleanExpression] = []
    if query.start is not None:
        terms.append(
            GreaterThanOrEqual(
                term=Reference("window_start"), value=literal(query.start.isoformat())
            )
        )
    if query.end is not None:
        terms.append(LessThan(term=Reference("window_start"), value=literal(query.end.isoformat())))
    if query.symbols:
        terms.append(In(term=Reference("symbol"), values={literal(v) for v in query.symbols}))
    if query.exchange is not None:
        terms.append(EqualTo(term=Reference("exchange"), value=literal(query.exchange)))
    expression: BooleanExpression = AlwaysTrue()
    for term in terms:
        expression = And(expression, term)
    return expression


def _published_snapshot(table: Table, query: CandleQuery) -> int | None:
    """``main``'s current snapshot, or the one it held at ``query.as_of``."""
    if query.as_of is None:
        current = table.current_snapshot()
        return current.snapshot_id if current else None
    history = [(e.timestamp_ms, e.snapshot_id) for e in table.history()]
    sid = snapshot_as_of(history, query.as_of, ".".join(table.name()))
    if table.snapshot_by_id(sid) is None:  # the log never outlives its snapshots; be sure
        raise AsOfUnavailable(f"snapshot {sid} of {'.'.join(table.name())} was expired")
    return sid


def _load(catalog: Catalog, namespace: str, name: str) -> Table:
    """The table, or an error that says where it was looked for and how it gets created."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        return catalog.load_table((namespace, name))
    except (NoSuchTableError, NoSuchNamespaceError):
        raise ValueError(
            f"no table {namespace}.{name} in this catalog: check OHLCV_NAMESPACE and the "
            "catalog settings, or create the tables (`ohlcv stack up`, `ohlcv ingest`)"
        ) from None


_LIVE_NEEDS_SPARK = (
    "live=True computes the unpublished tail with the pipeline's Spark candle function: "
    "pass spark=<a session> (e.g. infra.session.connect(Settings()))"
)


def read_candles_arrow(catalog: Catalog, namespace: str, query: CandleQuery) -> pa.Table:
    """Published candles (``main``, or ``main`` as of a time) through PyIceberg, no JVM."""
    if query.live:
        raise ValueError(_LIVE_NEEDS_SPARK)
    table = _load(catalog, namespace, query.tf.table)
    snapshot = _published_snapshot(table, query)
    if snapshot is None:
        return normalized(candle_arrow_schema().empty_table())
    scan = table.scan(row_filter=row_filter(query), snapshot_id=snapshot)
    return normalized(read_scan(table, scan, query))


def read_scan(table: Table, scan: DataScan, query: CandleQuery) -> pa.Table:
    """The scan's rows, read by Arrow's multithreaded scanner where that is provably the same.

    PyIceberg reads a scan's files one Python task at a time, about 6 ms a file here: a day of
    1m candles before maintenance compacts it is 288 files (one per five-minute commit), 1.8 s
    of a ~3 s command. Arrow's dataset scanner reads the same files with the same filter in
    0.3-0.5 s. It is used only when it cannot differ from Iceberg's reading: local Parquet
    files, no delete files, and columns never renamed or retyped (files written before a
    column was added lack it; both readers give nulls). Otherwise PyIceberg reads.
    """
    tasks = list(scan.plan_files())
    paths = arrow_readable(table, tasks)
    if paths is None:  # PyIceberg's own reader, on the tasks already planned
        from pyiceberg.io.pyarrow import ArrowScan

        return ArrowScan(
            scan.table_metadata,
            scan.io,
            scan.projection(),
            scan.row_filter,
            scan.case_sensitive,
            scan.limit,
        ).to_table(tasks)
    import pyarrow.dataset as ds
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    schema = schema_to_pyarrow(table.schema(), include_field_ids=False)
    return ds.dataset(paths, schema=schema, format="parquet").to_table(filter=arrow_filter(query))


def arrow_readable(table: Table, tasks: Sequence[FileScanTask]) -> list[str] | None:
    """The tasks' files as local paths if Arrow reads them as Iceberg would, else None."""
    from pyiceberg.manifest import FileFormat

    paths = [_local_path(task.file.file_path) for task in tasks]
    if (
        not tasks
        or any(task.delete_files for task in tasks)
        or any(task.file.file_format != FileFormat.PARQUET for task in tasks)
        or not columns_never_changed(table)
    ):
        return None
    local = [p for p in paths if p is not None]
    return local if len(local) == len(paths) else None


def columns_never_changed(table: Table) -> bool:
    """Every column of every schema the table had keeps its name and type in the others.

    Arrow matches a file's columns by name, Iceberg by field id: the two agree unless a
    column was renamed, retyped or dropped and re-added under an old name.
    """
    seen: dict[int, tuple[str, str]] = {}
    names: dict[str, int] = {}
    for schema in table.schemas().values():
        for field in schema.fields:
            shape = (field.name, str(field.field_type))
            if seen.setdefault(field.field_id, shape) != shape:
                return False
            if names.setdefault(field.name, field.field_id) != field.field_id:
                return False
    return True


def _local_path(location: str) -> str | None:
    """A ``file:`` (or bare) location as a local path; None for object storage."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    if parsed.scheme == "":
        return location
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return unquote(parsed.path)
    return None


def arrow_filter(query: CandleQuery) -> pc.Expression:
    """:func:`row_filter` as an Arrow expression (the same four terms)."""
    import pyarrow.compute as pc

    utc_us = pa.timestamp("us", tz="UTC")
    terms: list[pc.Expression] = []
    if query.start is not None:
        terms.append(pc.field("window_start") >= pa.scalar(query.start, utc_us))
    if query.end is not None:
        terms.append(pc.field("window_start") < pa.scalar(query.end, utc_us))
    if query.symbols:
        terms.append(pc.field("symbol").isin(list(query.symbols)))
    if query.exchange is not None:
        terms.append(pc.field("exchange") == query.exchange)
    expression = pc.scalar(True)
    for term in terms:
        expression = expression & term
    return expression


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
        raise ValueError(_LIVE_NEEDS_SPARK)
    if spark is not None:
        tables = Tables(settings.catalog_name, settings.namespace)
        frame = candles_frame(spark, tables, query, settings.market().calendars)
        return normalized(frame.toArrow(), query.live)
    if catalog is None:
        from infra.catalog import open_catalog

        catalog = open_catalog(settings)
    return read_candles_arrow(catalog, settings.namespace, query)


# Spark ------------------------------------------------------------------------------------


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


def spark_filter(query: CandleQuery) -> Column:
    """The query's filter as a Spark column (window bounds, symbols, exchange)."""
    from pyspark.sql import functions as F

    condition = F.lit(True)
    if query.start is not None:
        condition = condition & (F.col("window_start") >= F.lit(query.start))
    if query.end is not None:
        condition = condition & (F.col("window_start") < F.lit(query.end))
    if query.symbols:
        condition = condition & F.col("symbol").isin(list(query.symbols))
    if query.exchange is not None:
        condition = condition & (F.col("exchange") == F.lit(query.exchange))
    return condition


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


# Revisions --------------------------------------------------------------------------------


def read_revisions(
    tf: str | Timeframe | None = None,
    symbols: str | Sequence[str] | None = None,
    *,
    since: Instant | None = None,
    settings: Settings | None = None,
    catalog: Catalog | None = None,
) -> pd.DataFrame:
    """Published candles that a later run changed (late trades): one row per revised candle.

    Columns: timeframe, exchange, symbol, window_start, ``old_<column>`` and ``new_<column>``
    for every other candle column, revised_at (when the revision was published),
    candle_snapshot_id (the ``main`` snapshot that published it) and trades_snapshot_id.

    Args:
        tf: only this timeframe (default: all).
        symbols: only these symbols (default: all).
        since: only revisions published at or after this time.
    """
    if settings is None:
        from settings import Settings

        settings = Settings()
    if catalog is None:
        from infra.catalog import open_catalog

        catalog = open_catalog(settings)
    terms: list[BooleanExpression] = []
    if tf is not None:
        terms.append(EqualTo(term=Reference("timeframe"), value=literal(timeframe(tf).name)))
    if symbols is not None:
        terms.append(In(term=Reference("symbol"), values={literal(v) for v in _symbols(symbols)}))
    since_ = _instant(since, "since")
    if since_ is not None:
        terms.append(
            GreaterThanOrEqual(term=Reference("revised_at"), value=literal(since_.isoformat()))
        )
    expression: BooleanExpression = AlwaysTrue()
    for term in terms:
        expression = And(expression, term)
    table = _load(catalog, settings.namespace, CANDLE_REVISIONS)
    schema = pa.schema([pa.field(f.name, f.type) for f in REVISIONS_SCHEMA.as_arrow()])
    rows = table.scan(row_filter=expression).to_arrow().select(schema.names).cast(schema)
    ordered = rows.sort_by(
        [(c, "ascending") for c in ("revised_at", "timeframe", "exchange", "symbol")]
        + [("window_start", "ascending")]
    )
    return to_pandas(ordered)
