"""Candles out of the process: CSV text, Parquet files, rows of text for a terminal table.

Numbers stay exact: a decimal is written as its digits at the column's scale (``65000.50000000``,
never ``6.50005E+4`` or a float), timestamps as ISO-8601 in UTC. Parquet keeps the decimal
types themselves.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("csv", "table", "parquet")
TABLE_COLUMNS = (
    "symbol",
    "window_start",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trade_count",
    "provisional",
)
"""What ``--format table`` shows: the columns that fit a terminal."""


def output_format(name: str) -> str:
    """A format name, checked."""
    if name not in FORMATS:
        raise ValueError(f"format {name!r} is not known: use one of {', '.join(FORMATS)}")
    return name


def text(value: Any) -> str:
    """One value as exact text: decimals in fixed point, UTC timestamps in ISO-8601."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def text_rows(table: pa.Table) -> Iterator[list[str]]:
    """The table's rows as lists of exact text, in column order."""
    for batch in table.to_batches():
        columns = [column.to_pylist() for column in batch.columns]
        for row in zip(*columns, strict=True):
            yield [text(v) for v in row]


def write_csv(table: pa.Table, out: TextIO) -> None:
    """A header of the column names, then one line per candle."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    writer.writerows(text_rows(table))


def write_parquet(table: pa.Table, path: Path) -> None:
    """The candles with their Arrow types (exact decimals, UTC timestamps)."""
    pq.write_table(table, path)
