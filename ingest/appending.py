"""Appending accepted trades to ``trades``: one commit, one file set per day partition.

PyIceberg's ``Table.append`` finds the partitions of its input by filtering the whole input
once per partition (and copying each result again), which made up a third of ingestion's time.
Ingestion already sorts its rows, so it sorts them by day first: each day is then one
contiguous, zero-copy slice, written by PyIceberg's own file writer (statistics, file names,
compression as ``append`` does) and committed as one append. Any other partition spec falls
back to ``Table.append``.

Ingest appends through a :class:`CachedTable`: PyIceberg 0.12's transaction rebuilds and
deep-copies the whole table metadata (every snapshot in it) each time its metadata is read,
about 35 times per append, so an append's cost grew with the table's history.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyiceberg.io.pyarrow import bin_pack_arrow_table, pyarrow_to_schema, write_file
from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
from pyiceberg.table import Table, TableProperties, Transaction, WriteTask
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import TableUpdate, update_table_metadata
from pyiceberg.transforms import DayTransform
from pyiceberg.utils.properties import property_as_bool, property_as_int

US_PER_DAY = 86_400_000_000


class CachedTransaction(Transaction):
    """A PyIceberg transaction that works out its table metadata once per staged state.

    ``Transaction.table_metadata`` replays the staged updates onto the table's metadata and
    deep-copies the result on every read; an append reads it dozens of times, and the copy
    holds every snapshot of the table. The result only depends on the table's metadata and on
    the staged updates, both immutable and replaced (never changed) when they change, so it is
    kept until either is replaced (the approach of apache/iceberg-python PR #3302).
    """

    _cached: tuple[TableMetadata, tuple[TableUpdate, ...], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates = self._table.metadata, self._updates
        cached = self._cached
        if cached is None or cached[0] is not base or cached[1] is not updates:
            cached = (base, updates, update_table_metadata(base, updates))
            self._cached = cached
        return cached[2]


class CachedTable(Table):
    """A table whose transactions (``append`` included) are :class:`CachedTransaction` s."""

    @classmethod
    def of(cls, table: Table) -> CachedTable:
        """The same table (same metadata, file IO and catalog) as a :class:`CachedTable`."""
        return cls(
            table.name(),
            table.metadata,
            table.metadata_location,
            table.io,
            table.catalog,
            table.config,
        )

    def transaction(self) -> Transaction:
        return CachedTransaction(self)


def partitioned_by_day_of_ts(table: Table) -> bool:
    """True when ``table`` is partitioned by ``day(ts)`` alone (the trades table's spec)."""
    fields = table.spec().fields
    return (
        len(fields) == 1
        and isinstance(fields[0].transform, DayTransform)
        and table.schema().find_column_name(fields[0].source_id) == "ts"
    )


def append_by_day(
    table: Table, rows: pa.Table, days: np.ndarray, snapshot_properties: dict[str, str]
) -> None:
    """Append ``rows``, sorted by ``days`` (``floor(ts / 1 day)`` of each row), in one commit.

    Falls back to ``table.append`` unless the table is partitioned by ``day(ts)`` alone.
    """
    if not partitioned_by_day_of_ts(table):
        table.append(rows, snapshot_properties=snapshot_properties)
        return
    if len(days) > 1 and bool(np.any(days[1:] < days[:-1])):
        raise ValueError("rows must be sorted by day to be appended by day")
    with table.transaction() as txn:
        metadata = txn.table_metadata
        update = txn.update_snapshot(snapshot_properties=snapshot_properties)
        merge = property_as_bool(
            metadata.properties,
            TableProperties.MANIFEST_MERGE_ENABLED,
            TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT,
        )
        with update.merge_append() if merge else update.fast_append() as append_files:
            tasks = _tasks(metadata, rows, days, append_files.commit_uuid)
            for data_file in write_file(table.io, metadata, tasks):
                append_files.append_data_file(data_file)


def _tasks(
    metadata: TableMetadata, rows: pa.Table, days: np.ndarray, write_uuid: uuid.UUID
) -> Iterator[WriteTask]:
    schema, spec = metadata.schema(), metadata.spec()
    field = spec.fields[0]
    transform = field.transform.pyarrow_transform(schema.find_field(field.source_id).field_type)
    task_schema = pyarrow_to_schema(
        rows.schema, name_mapping=schema.name_mapping, format_version=metadata.format_version
    )
    target = property_as_int(
        metadata.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    assert target is not None
    counter = itertools.count(0)
    cuts = [0, *(np.flatnonzero(days[1:] != days[:-1]) + 1).tolist(), len(days)]
    for start, stop in itertools.pairwise(cuts):
        part = rows.slice(start, stop - start)
        # The partition value exactly as PyIceberg computes it, from the slice's first row.
        value = transform(part.column("ts").slice(0, 1)).to_pylist()[0]
        key = PartitionKey([PartitionFieldValue(field, value)], spec, schema)
        for batches in bin_pack_arrow_table(part, target):
            yield WriteTask(
                write_uuid=write_uuid,
                task_id=next(counter),
                schema=task_schema,
                record_batches=batches,
                partition_key=key,
            )
