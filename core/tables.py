"""Table definitions, shared by Spark (reads, MERGE) and PyIceberg (creation, ingestion).

Prices and quantities are DECIMAL end to end. Precision 18 keeps them in Spark's 64-bit decimal
representation (fast aggregation) while holding e.g. 9_999_999_999.99999999.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import (
    DayTransform,
    HourTransform,
    MonthTransform,
    Transform,
    YearTransform,
)
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from core.timeframes import TIMEFRAMES, Timeframe

DECIMAL_PRECISION = 18
"""Digits of price and quantity: 18 keeps them in Spark's 64-bit decimal representation."""
DECIMAL_SCALE = 8
"""Decimal places of price and quantity (DECIMAL(18, 8)): ingestion parses to it, candles sum
at it."""
PRICE = DecimalType(DECIMAL_PRECISION, DECIMAL_SCALE)
QUANTITY = DecimalType(DECIMAL_PRECISION, DECIMAL_SCALE)
VOLUME = DecimalType(28, DECIMAL_SCALE)  # sum of DECIMAL(18, 8), as Spark types it
QUOTE_VOLUME = DecimalType(38, 16)  # sum of price * quantity, DECIMAL(37, 16) each

TRADES = "trades"
TRADES_REJECTED = "trades_rejected"
CANDLE_REVISIONS = "candle_revisions"
LANDING_FILES = "landing_files"
"""The landing zone's ledger (:mod:`ingest.ledger`), created by the first landing pass."""
TRADE_KEY = ("exchange", "symbol", "trade_id", "trade_id_text")
"""A trade's key: exactly one of ``trade_id`` (an id that is a number) and ``trade_id_text``
(any other id, as the exchange gives it) is set (see docs/architecture.md, "Trade ids")."""
CANDLE_KEY = ("exchange", "symbol", "window_start")
MAX_EXCHANGE_LENGTH = 64
"""Longest stored exchange name, in characters (code points) after stripping whitespace."""
MAX_SYMBOL_LENGTH = 64
"""Longest stored symbol, in characters (code points) after stripping whitespace."""
MAX_TRADE_ID_LENGTH = 128
"""Longest stored text trade id, in characters after stripping whitespace (a UUID is 36)."""
PROVISIONAL = "provisional"
"""Column a live read adds: True for a candle computed from trades not yet published."""

TRADES_SCHEMA = Schema(
    NestedField(1, "exchange", StringType(), required=True),
    NestedField(2, "symbol", StringType(), required=True),
    # Optional since issue 28: null when the id is text (then trade_id_text holds it).
    NestedField(3, "trade_id", LongType(), required=False),
    NestedField(4, "price", PRICE, required=True),
    NestedField(5, "quantity", QUANTITY, required=True),
    NestedField(6, "side", StringType(), required=True),
    NestedField(7, "ts", TimestamptzType(), required=True),
    NestedField(8, "ingested_at", TimestamptzType(), required=True),
    # Added by issue 28; tables created before get it (and an optional trade_id) from
    # ``ensure_tables``.
    NestedField(9, "trade_id_text", StringType(), doc="a trade id that is not a number"),
)

# Rejected rows keep every raw value as text: a value that failed to parse is still kept.
REJECTED_SCHEMA = Schema(
    NestedField(1, "exchange", StringType()),
    NestedField(2, "symbol", StringType()),
    NestedField(3, "trade_id", StringType()),
    NestedField(4, "price", StringType()),
    NestedField(5, "quantity", StringType()),
    NestedField(6, "side", StringType()),
    NestedField(7, "ts", StringType()),
    NestedField(8, "reason", StringType(), required=True),
    NestedField(9, "source", StringType(), required=True),
    NestedField(10, "rejected_at", TimestamptzType(), required=True),
)

# Candle columns are optional at the storage level; the GX suites enforce non-null values.
CANDLE_SCHEMA = Schema(
    NestedField(1, "exchange", StringType()),
    NestedField(2, "symbol", StringType()),
    NestedField(3, "window_start", TimestamptzType()),
    NestedField(4, "window_end", TimestamptzType()),
    NestedField(5, "open", PRICE),
    NestedField(6, "high", PRICE),
    NestedField(7, "low", PRICE),
    NestedField(8, "close", PRICE),
    NestedField(9, "volume", VOLUME),
    NestedField(10, "quote_volume", QUOTE_VOLUME),
    NestedField(11, "trade_count", LongType()),
    NestedField(12, "vwap", PRICE),
    NestedField(13, "open_ts", TimestamptzType()),
    NestedField(14, "close_ts", TimestamptzType()),
    NestedField(15, "computed_at", TimestamptzType()),
    # Added by issue 14; tables created before get them from ``ensure_tables`` (null in old rows:
    # a real candle, whose trading date is the UTC date of its window).
    NestedField(16, "trading_date", DateType(), doc="local trading date of the window"),
    NestedField(17, "synthetic", BooleanType(), doc="true: no trades (gap policy fill)"),
)
CANDLE_VALUE_COLUMNS = tuple(
    f.name for f in CANDLE_SCHEMA.fields if f.name not in CANDLE_KEY and f.name != "computed_at"
)

# What a published candle looked like before and after a run changed it (a late trade), one row
# per revised candle; optional columns, as Spark writes them. Only candles published after their
# window had closed count: one published while its window was still open is expected to grow
# (see spark_jobs/revisions.py).
_REVISED_FIELDS = [f for f in CANDLE_SCHEMA.fields if f.name not in CANDLE_KEY]
REVISED_COLUMNS = tuple(f.name for f in _REVISED_FIELDS)
"""Candle columns a revision records twice, as ``old_<column>`` and ``new_<column>``."""
_REVISION_KEY_FIELDS = (
    NestedField(1, "timeframe", StringType()),
    NestedField(2, "exchange", StringType()),
    NestedField(3, "symbol", StringType()),
    NestedField(4, "window_start", TimestamptzType()),
)
_REVISION_VALUE_FIELDS = tuple(
    NestedField(5 + 2 * i + side, f"{prefix}_{f.name}", f.field_type)
    for i, f in enumerate(_REVISED_FIELDS)
    for side, prefix in enumerate(("old", "new"))
)
REVISIONS_SCHEMA = Schema(
    *_REVISION_KEY_FIELDS,
    *_REVISION_VALUE_FIELDS,
    NestedField(100, "revised_at", TimestamptzType()),
    NestedField(101, "candle_snapshot_id", LongType()),
    NestedField(102, "trades_snapshot_id", LongType()),
)

_TRANSFORMS: dict[str, Transform[Any, Any]] = {
    "hour": HourTransform(),
    "day": DayTransform(),
    "month": MonthTransform(),
    "year": YearTransform(),
}

_MB = 1024 * 1024
_FORMAT = {"format-version": "2"}  # fixed at creation; never "upgraded"

# Properties for a table written every few minutes for years. Set at creation and brought up
# to date on existing tables by ``ensure_tables`` (a commit only when one differs).
LONG_LIFE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
    # Each commit writes a metadata file listing every snapshot; keep only the last few.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    # What anyone's snapshot expiry (Spark or PyIceberg defaults) keeps; ours passes the same
    # values from Settings and also keeps what the watermarks refer to.
    "history.expire.max-snapshot-age-ms": str(48 * 3600 * 1000),
    "history.expire.min-snapshots-to-keep": "20",
    # Merge small manifests on commit, so a table written every 5 minutes keeps few of them.
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "20",
}
TRADES_PROPERTIES = {
    **LONG_LIFE_PROPERTIES,
    "write.target-file-size-bytes": str(256 * _MB),
    # A column chunk is dictionary-encoded until its dictionary reaches this size, then plain.
    # Exchange, symbol and side fit easily; trade ids and timestamps (nearly all distinct) used
    # to fill 2 MB of dictionary per row group before falling back: 18 % of ingestion's CPU
    # time for 10 M trades, and files 6 % larger (zstd compresses the plain values better).
    "write.parquet.dict-size-bytes": str(64 * 1024),
}
_NEARLY_UNIQUE_CANDLE_COLUMNS = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "vwap",
    "open_ts",
    "close_ts",
)
CANDLE_PROPERTIES = {
    **LONG_LIFE_PROPERTIES,
    "write.target-file-size-bytes": str(64 * _MB),
    # Candles are small; copy-on-write keeps reads free of delete files.
    "write.merge.mode": "copy-on-write",
    "write.update.mode": "copy-on-write",
    "write.delete.mode": "copy-on-write",
    # Values and trade times are nearly all distinct within a file: a dictionary of them was
    # built for every page, then dropped for plain encoding. Without it a week of 1m candles
    # (425 k) is written in 3.6 s instead of 4.3 s, into files as large.
    **{
        f"write.parquet.dict-encoding-enabled.column.{column}": "false"
        for column in _NEARLY_UNIQUE_CANDLE_COLUMNS
    },
    # A 1m table holds a file per hour (2,500 candles for 50 symbols): weighed as 4 MB each
    # (the default) a week's scan was 42 tasks of 4 files, now a few tasks of many files.
    "read.split.open-file-cost": str(256 * 1024),
}


@dataclass(frozen=True)
class Tables:
    """Spark names of the project's tables in one catalog and namespace."""

    catalog: str
    namespace: str

    def name(self, table: str) -> str:
        return f"{self.catalog}.{self.namespace}.{table}"

    @property
    def trades(self) -> str:
        return self.name(TRADES)

    @property
    def trades_rejected(self) -> str:
        return self.name(TRADES_REJECTED)

    @property
    def candle_revisions(self) -> str:
        return self.name(CANDLE_REVISIONS)

    def candles(self, tf: Timeframe) -> str:
        return self.name(tf.table)


def trades_arrow_schema() -> pa.Schema:
    """Arrow schema PyIceberg accepts for an append to ``trades``."""
    return TRADES_SCHEMA.as_arrow()


def rejected_arrow_schema() -> pa.Schema:
    return REJECTED_SCHEMA.as_arrow()


def _candle_spec(tf: Timeframe) -> PartitionSpec:
    source = CANDLE_SCHEMA.find_field("window_start").field_id
    return PartitionSpec(
        PartitionField(source, 1000, _TRANSFORMS[tf.partition], f"window_start_{tf.partition}")
    )


def ensure_table(
    catalog: Catalog,
    identifier: tuple[str, str],
    properties: Mapping[str, str],
    **kwargs: object,
) -> Table:
    """Load the table and bring its properties up to date, or create it.

    Loading first matters: ``create_table`` writes a metadata file before it finds out that
    the table exists, so calling it on every run would litter the table with orphan files.
    """
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        try:
            create: Any = catalog.create_table  # kwargs: schema, partition_spec, sort_order
            return create(identifier, properties={**_FORMAT, **properties}, **kwargs)  # type: ignore[no-any-return]
        except TableAlreadyExistsError:  # created concurrently
            table = catalog.load_table(identifier)
    stale = {k: v for k, v in properties.items() if table.properties.get(k) != v}
    if stale:
        with table.transaction() as tx:
            tx.set_properties(stale)
        table = catalog.load_table(identifier)
    return table


def _add_missing_columns(table: Table, schema: Schema) -> Table:
    """Add the columns of ``schema`` a table created by an earlier version lacks (one schema
    commit, once); a table that has them all is not touched."""
    present = {f.name for f in table.schema().fields}
    missing = [f for f in schema.fields if f.name not in present]
    if not missing:
        return table
    with table.update_schema() as update:
        for f in missing:
            update.add_column(f.name, f.field_type, doc=f.doc)
    return table.refresh()


def _upgrade_trades(table: Table) -> Table:
    """Give a ``trades`` table made before text trade ids an optional ``trade_id`` and a
    ``trade_id_text`` column, in one schema commit (no snapshot, no data file rewritten);
    a table that has both is not touched. Iceberg cannot change long to string in place, so
    text ids get a column of their own and numeric ones keep theirs."""
    schema = table.schema()
    text = TRADES_SCHEMA.find_field("trade_id_text")
    has_text = text.name in {f.name for f in schema.fields}
    if has_text and not schema.find_field("trade_id").required:
        return table
    with table.update_schema() as update:
        update.make_column_optional("trade_id")
        if not has_text:
            update.add_column(text.name, text.field_type, doc=text.doc)
    return table.refresh()


def ensure_tables(catalog: Catalog, namespace: str) -> dict[str, Table]:
    """Create the namespace, ``trades``, ``trades_rejected``, the five candle tables and
    ``candle_revisions`` if missing.

    Idempotent: an existing table is only changed when its properties are older than
    :data:`LONG_LIFE_PROPERTIES` and its own table's, or when it lacks columns this version
    added (``trades``: text trade ids, see :func:`_upgrade_trades`), one commit each, once;
    otherwise nothing is written.
    """
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(namespace)
    ts_id = TRADES_SCHEMA.find_field("ts").field_id
    symbol_id = TRADES_SCHEMA.find_field("symbol").field_id
    trades = ensure_table(
        catalog,
        (namespace, TRADES),
        TRADES_PROPERTIES,
        schema=TRADES_SCHEMA,
        partition_spec=PartitionSpec(PartitionField(ts_id, 1000, DayTransform(), "ts_day")),
        sort_order=SortOrder(SortField(symbol_id), SortField(ts_id)),
    )
    tables = {
        TRADES: _upgrade_trades(trades),
        TRADES_REJECTED: ensure_table(
            catalog, (namespace, TRADES_REJECTED), LONG_LIFE_PROPERTIES, schema=REJECTED_SCHEMA
        ),
    }
    revised_at = REVISIONS_SCHEMA.find_field("revised_at").field_id
    # Revisions are rare (late trades): month partitions keep their files few.
    revisions = ensure_table(
        catalog,
        (namespace, CANDLE_REVISIONS),
        LONG_LIFE_PROPERTIES,
        schema=REVISIONS_SCHEMA,
        partition_spec=PartitionSpec(
            PartitionField(revised_at, 1000, MonthTransform(), "revised_at_month")
        ),
    )
    tables[CANDLE_REVISIONS] = _add_missing_columns(revisions, REVISIONS_SCHEMA)
    for tf in TIMEFRAMES.values():
        candles = ensure_table(
            catalog,
            (namespace, tf.table),
            CANDLE_PROPERTIES,
            schema=CANDLE_SCHEMA,
            partition_spec=_candle_spec(tf),
        )
        tables[tf.table] = _add_missing_columns(candles, CANDLE_SCHEMA)
    return tables
