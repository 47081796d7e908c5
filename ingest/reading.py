"""Reading trades files and checking that an input has the required columns."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REQUIRED_COLUMNS = ("exchange", "symbol", "trade_id", "price", "quantity", "side", "ts")


class SchemaError(ValueError):
    """The input as a whole has the wrong shape; nothing was written."""


def read_trades_file(path: Path) -> pa.Table:
    """Read a trades file: Parquet (``.parquet``/``.pq``) or CSV (``.csv``), chosen by suffix.

    A Parquet file's exchange, symbol and side come dictionary-encoded (see
    :func:`text_columns`). CSV columns are all read as text (empty = missing) and parsed by
    :func:`ingest.ingest`, so a value like ``0.1`` stays exact instead of going through a float.

    Raises:
        SchemaError: unsupported suffix, a damaged Parquet file, or a required column is
            missing from a CSV header.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pq.read_table(path, read_dictionary=text_columns(pq.read_schema(path)))
        except OSError as e:
            if e.errno is not None:  # the system's own error (missing, permissions, disk)
                raise
            # pyarrow reports a damaged file as an OSError without errno or file name.
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise SchemaError(
                f"cannot read {str(path)!r}: {first}; the file is damaged or not Parquet, "
                "nothing was written"
            ) from None
    if suffix == ".csv":
        return _read_csv(path)
    raise SchemaError(
        f"cannot read {str(path)!r}: unsupported suffix {path.suffix!r}; "
        "use a .parquet, .pq or .csv file"
    )


def text_columns(schema: pa.Schema) -> list[str]:
    """The required text columns of a Parquet file, to read dictionary-encoded.

    Exchange, symbol and side take few distinct values: read as codes into a dictionary, they
    are parsed once per distinct value, and Parquet usually stores them that way already.
    """
    text = (pa.types.is_string, pa.types.is_large_string)
    names = ("exchange", "symbol", "side")
    return [f.name for f in schema if f.name in names and any(is_(f.type) for is_ in text)]


def check_columns(raw: pa.Table) -> None:
    """Raise :class:`SchemaError` unless each required column appears exactly once in ``raw``."""
    _check_required(raw.column_names)
    for name in REQUIRED_COLUMNS:
        count = len(raw.schema.get_all_field_indices(name))
        if count > 1:
            raise SchemaError(
                f"column {name!r} appears {count} times in the input; keep exactly one"
            )


def _read_csv(path: Path) -> pa.Table:
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    return pacsv.read_csv(path, convert_options=own_csv_options(check_header(header)))


def check_header(header: list[str]) -> list[str]:
    """The required columns a CSV header names (SchemaError when one is missing)."""
    _check_required(header)
    return [name for name in REQUIRED_COLUMNS if name in header]


def own_csv_options(present: list[str]) -> pacsv.ConvertOptions:
    """Reading the required columns of a CSV in the project's layout, all as text."""
    return pacsv.ConvertOptions(
        column_types={name: pa.large_string() for name in present},
        include_columns=present,
        strings_can_be_null=False,
    )


def _check_required(names: list[str]) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise SchemaError(
            f"input is missing required column {missing[0]!r} (missing: {', '.join(missing)}; "
            f"found: {', '.join(names) or 'no columns'}); add it or rename the column that "
            "holds it"
        )
