"""Reading published candles through PyIceberg, with no JVM.

The query's filter prunes partitions and files; local Parquet files are read by Arrow's
multithreaded scanner where that provably reads what Iceberg would (:func:`read_scan`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from read.as_of import AsOfUnavailable, snapshot_as_of
from read.filters import arrow_filter, row_filter
from read.query import CandleQuery
from read.shape import candle_arrow_schema, normalized

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import DataScan, FileScanTask, Table


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


def load_table(catalog: Catalog, namespace: str, name: str) -> Table:
    """The table, or an error that says where it was looked for and how it gets created."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        return catalog.load_table((namespace, name))
    except (NoSuchTableError, NoSuchNamespaceError):
        raise ValueError(
            f"no table {namespace}.{name} in this catalog: check OHLCV_NAMESPACE and the "
            "catalog settings, or create the tables (`ohlcv stack up`, `ohlcv ingest`)"
        ) from None


LIVE_NEEDS_SPARK = (
    "live=True computes the unpublished tail with the pipeline's Spark candle function: "
    "pass spark=<a session> (e.g. infra.session.connect(Settings()))"
)


def read_candles_arrow(catalog: Catalog, namespace: str, query: CandleQuery) -> pa.Table:
    """Published candles (``main``, or ``main`` as of a time) through PyIceberg, no JVM."""
    if query.live:
        raise ValueError(LIVE_NEEDS_SPARK)
    table = load_table(catalog, namespace, query.tf.table)
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
