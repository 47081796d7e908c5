"""The landing zone's ledger: which files went in, which failed, in the table ``landing_files``.

A file's identity is its path, size and content checksum (SHA-256). A batch of files is
recorded twice, for two reasons:

- atomically with its trades: the ``trades`` append's snapshot summary names the batch and
  its files (``ohlcv.landing.batch``, ``ohlcv.landing.files``), so the trades and the record
  of where they came from commit together or not at all;
- durably, in ``landing_files`` (one row per file and outcome, appended after the trades and
  rejects commits): snapshot summaries go away when maintenance expires their snapshots, the
  ledger's rows do not. Each pass carries forward into the ledger any batch a crash left
  recorded only in a summary (see :func:`committed_batches`).

Whatever is lost in a crash, re-ingesting a file is harmless: its trades are then exact
duplicates of the stored ones and are dropped, and its rejects are recorded once. So a file
that is in a summary but not yet in the ledger is simply ingested again, and its ledger row
names the snapshot that committed its trades.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from core.tables import LANDING_FILES, LONG_LIFE_PROPERTIES, TRADES, ensure_table

BATCH_PROPERTY = "ohlcv.landing.batch"
FILES_PROPERTY = "ohlcv.landing.files"
INGESTED, FAILED = "ingested", "failed"

_TS = pa.timestamp("us", tz="UTC")
LEDGER_SCHEMA = pa.schema(
    [
        pa.field("path", pa.large_string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("sha256", pa.large_string(), nullable=False),
        pa.field("modified_at", _TS),
        pa.field("status", pa.large_string(), nullable=False),
        pa.field("reason", pa.large_string()),
        pa.field("format", pa.large_string()),
        pa.field("rows", pa.int64()),
        pa.field("batch_id", pa.large_string()),
        pa.field("trades_snapshot_id", pa.int64()),
        pa.field("recorded_at", _TS, nullable=False),
    ]
)


@dataclass(frozen=True)
class Identity:
    """What makes a file the same file: where it is, how long it is, what it holds."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Record:
    """One ledger row: a file and what became of it."""

    identity: Identity
    modified_at: datetime
    status: str
    reason: str | None
    format: str | None
    rows: int | None
    batch_id: str | None
    trades_snapshot_id: int | None
    recorded_at: datetime


def ensure_ledger(catalog: Catalog, namespace: str) -> Table:
    """The ``landing_files`` table of ``namespace``, created if missing (loaded first: a
    catalog's ``create_table`` writes a metadata file before it finds the table exists, and a
    pass every minute would leave thousands of them a day)."""
    return ensure_table(
        catalog, (namespace, LANDING_FILES), LONG_LIFE_PROPERTIES, schema=LEDGER_SCHEMA
    )


def read_ledger(table: Table) -> list[Record]:
    """Every row of the ledger, oldest first (a pass reads it once: a row per file)."""
    rows = table.scan().to_arrow().sort_by("recorded_at").to_pylist()
    return [
        Record(
            Identity(r["path"], r["size"], r["sha256"]),
            r["modified_at"],
            r["status"],
            r["reason"],
            r["format"],
            r["rows"],
            r["batch_id"],
            r["trades_snapshot_id"],
            r["recorded_at"],
        )
        for r in rows
    ]


def append_records(table: Table, records: list[Record]) -> None:
    """Append ``records`` to the ledger in one commit."""
    if not records:
        return
    columns = {
        "path": [r.identity.path for r in records],
        "size": [r.identity.size for r in records],
        "sha256": [r.identity.sha256 for r in records],
        "modified_at": [r.modified_at for r in records],
        "status": [r.status for r in records],
        "reason": [r.reason for r in records],
        "format": [r.format for r in records],
        "rows": [r.rows for r in records],
        "batch_id": [r.batch_id for r in records],
        "trades_snapshot_id": [r.trades_snapshot_id for r in records],
        "recorded_at": [r.recorded_at for r in records],
    }
    table.append(pa.table(columns, schema=LEDGER_SCHEMA))


def batch_properties(batch_id: str, files: list[Identity]) -> dict[str, str]:
    """The snapshot summary properties that name a batch and its files."""
    listed = [[f.path, f.size, f.sha256] for f in files]
    return {BATCH_PROPERTY: batch_id, FILES_PROPERTY: json.dumps(listed, separators=(",", ":"))}


def committed_batches(
    catalog: Catalog, namespace: str, since: datetime | None
) -> dict[Identity, int]:
    """Files named by ``trades`` snapshots committed at or after ``since`` (None: all retained):
    the identity of each, and the snapshot that committed its trades.

    Bounded: only the snapshots the table still retains and committed since the ledger's
    newest row (minus a margin for clocks) are read; their summaries are in the table's
    metadata already. A snapshot maintenance has expired is not needed: its files are ingested
    again, as duplicates, and recorded then.
    """
    table = catalog.load_table((namespace, TRADES))
    since_ms = int(since.timestamp() * 1000) - 600_000 if since is not None else None
    found: dict[Identity, int] = {}
    for snapshot in table.metadata.snapshots:
        if since_ms is not None and snapshot.timestamp_ms < since_ms:
            continue
        summary = snapshot.summary
        listed = summary.get(FILES_PROPERTY) if summary is not None else None
        if listed:
            for path, size, sha in json.loads(listed):
                found[Identity(path, int(size), sha)] = snapshot.snapshot_id
    return found
