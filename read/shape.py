"""The result shape every reader returns: the candle table's columns, UTC, sorted."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from core.tables import CANDLE_KEY, CANDLE_SCHEMA, PROVISIONAL

if TYPE_CHECKING:
    import pandas as pd


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
        if f.name not in table.column_names:  # a table not upgraded yet (see read.spark_reader)
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    shaped = table.select(schema.names).cast(schema)
    return shaped.sort_by([(c, "ascending") for c in CANDLE_KEY])


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Decimals stay ``decimal.Decimal`` (exact); timestamps are tz-aware UTC."""
    return table.to_pandas()
