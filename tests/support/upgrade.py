"""The ``trades`` table as the code before text trade ids created and wrote it (issue 28)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DecimalType, LongType, NestedField, StringType, TimestamptzType

from core.tables import TRADES, TRADES_PROPERTIES
from tests.support.oracle import Trade

# Written out, not derived from core.tables: this is what older versions left on disk.
OLD_TRADES_SCHEMA = Schema(
    NestedField(1, "exchange", StringType(), required=True),
    NestedField(2, "symbol", StringType(), required=True),
    NestedField(3, "trade_id", LongType(), required=True),
    NestedField(4, "price", DecimalType(18, 8), required=True),
    NestedField(5, "quantity", DecimalType(18, 8), required=True),
    NestedField(6, "side", StringType(), required=True),
    NestedField(7, "ts", TimestamptzType(), required=True),
    NestedField(8, "ingested_at", TimestamptzType(), required=True),
)


def create_old_trades(catalog: Catalog, namespace: str) -> Table:
    """A ``trades`` table of the old schema in ``namespace`` (replacing one there)."""
    with contextlib.suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(namespace)
    with contextlib.suppress(NoSuchTableError):
        catalog.drop_table((namespace, TRADES))
    return catalog.create_table(
        (namespace, TRADES),
        schema=OLD_TRADES_SCHEMA,
        partition_spec=PartitionSpec(PartitionField(7, 1000, DayTransform(), "ts_day")),
        sort_order=SortOrder(SortField(2), SortField(7)),
        properties={"format-version": "2", **TRADES_PROPERTIES},
    )


def old_rows(trades: list[Trade], ingested_at: datetime) -> pa.Table:
    """Trades with numeric ids as the old ingest appended them (the old Arrow schema)."""
    assert all(isinstance(t.trade_id, int) for t in trades), "the old schema has no text ids"
    n = len(trades)
    return pa.Table.from_pydict(
        {
            "exchange": [t.exchange for t in trades],
            "symbol": [t.symbol for t in trades],
            "trade_id": [t.trade_id for t in trades],
            "price": [t.price for t in trades],
            "quantity": [t.quantity for t in trades],
            "side": [t.side for t in trades],
            "ts": [t.ts.astimezone(UTC) for t in trades],
            "ingested_at": [ingested_at] * n,
        },
        schema=OLD_TRADES_SCHEMA.as_arrow(),
    )
