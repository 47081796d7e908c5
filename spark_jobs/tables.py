"""Table definitions, shared by Spark (reads, MERGE) and PyIceberg (creation, ingestion).

Prices and quantities are DECIMAL end to end. Precision 18 keeps them in Spark's 64-bit decimal
representation (fast aggregation) while holding e.g. 9_999_999_999.99999999.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError
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
    DecimalType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from spark_jobs.timeframes import TIMEFRAMES, Timeframe

PRICE = DecimalType(18, 8)
QUANTITY = DecimalType(18, 8)
VOLUME = DecimalType(28, 8)  # sum of DECIMAL(18, 8), as Spark types it
QUOTE_VOLUME = DecimalType(38, 16)  # sum of price * quantity, DECIMAL(37, 16) each

TRADES = "trades"
TRADES_REJECTED = "trades_rejected"
TRADE_KEY = ("exchange", "symbol", "trade_id")
CANDLE_KEY = ("exchange", "symbol", "window_start")

TRADES_SCHEMA = Schema(
    NestedField(1, "exchange", StringType(), required=True),
    NestedField(2, "symbol", StringType(), required=True),
    NestedField(3, "trade_id", LongType(), required=True),
    NestedField(4, "price", PRICE, required=True),
    NestedField(5, "quantity", QUANTITY, required=True),
    NestedField(6, "side", StringType(), required=True),
    NestedField(7, "ts", TimestamptzType(), required=True),
    NestedField(8, "ingested_at", TimestamptzType(), required=True),
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
)
CANDLE_VALUE_COLUMNS = tuple(
    f.name for f in CANDLE_SCHEMA.fields if f.name not in CANDLE_KEY and f.name != "computed_at"
)

_TRANSFORMS: dict[str, Transform[Any, Any]] = {
    "hour": HourTransform(),
    "day": DayTransform(),
    "month": MonthTransform(),
    "year": YearTransform(),
}

_COMMON_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
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


def _create(catalog: Catalog, identifier: tuple[str, str], **kwargs: object) -> Table:
    try:
        return catalog.create_table(identifier, **kwargs)  # type: ignore[arg-type]
    except TableAlreadyExistsError:
        return catalog.load_table(identifier)


def ensure_tables(catalog: Catalog, namespace: str) -> dict[str, Table]:
    """Create the namespace, ``trades``, ``trades_rejected`` and the five candle tables if missing.

    Idempotent: existing tables are loaded, never altered.
    """
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(namespace)
    ts_id = TRADES_SCHEMA.find_field("ts").field_id
    symbol_id = TRADES_SCHEMA.find_field("symbol").field_id
    tables = {
        TRADES: _create(
            catalog,
            (namespace, TRADES),
            schema=TRADES_SCHEMA,
            partition_spec=PartitionSpec(PartitionField(ts_id, 1000, DayTransform(), "ts_day")),
            sort_order=SortOrder(SortField(symbol_id), SortField(ts_id)),
            properties=_COMMON_PROPERTIES,
        ),
        TRADES_REJECTED: _create(
            catalog,
            (namespace, TRADES_REJECTED),
            schema=REJECTED_SCHEMA,
            properties=_COMMON_PROPERTIES,
        ),
    }
    for tf in TIMEFRAMES.values():
        tables[tf.table] = _create(
            catalog,
            (namespace, tf.table),
            schema=CANDLE_SCHEMA,
            partition_spec=_candle_spec(tf),
            properties={
                **_COMMON_PROPERTIES,
                # Candles are small; copy-on-write keeps reads free of delete files.
                "write.merge.mode": "copy-on-write",
                "write.update.mode": "copy-on-write",
                "write.delete.mode": "copy-on-write",
            },
        )
    return tables
