"""The landing zone: a directory or ``s3://bucket/prefix`` where trade files arrive, ingested
exactly once per file by passes (`ohlcv ingest DIR_OR_PREFIX`, the "OHLCV Trades Ingest"
deployment every minute).

A pass lists the files, takes those the ledger (:mod:`ingest.ledger`) has not seen with this
identity (path, size, SHA-256), oldest first, at most ``max_files`` and ``max_bytes`` of them,
and ingests them in batches: one ``trades`` commit per batch, carrying the batch's file
identities in its snapshot summary, then the rejects, then the ledger rows. A file that cannot
be read or parsed is recorded as failed with its reason, and the pass goes on; it is tried
again only when its content changes. A file whose content changed after it was ingested
(Binance republishes corrected files under the same name) is ingested again as the new
version it is, and reported as ``changed``: its trades that are already stored are duplicates,
new ones are appended, and any that contradict a stored trade (same id, other values) are
rejected as ``conflicting_duplicate`` in ``trades_rejected``: stored trades never change.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from pyiceberg.catalog import Catalog

from ingest.columns import use_reusing_memory_pool
from ingest.formats import IDS_MAY_BE_MISSING, Feed, read_feed
from ingest.ledger import (
    FAILED,
    INGESTED,
    Identity,
    Record,
    append_records,
    batch_properties,
    committed_batches,
    ensure_ledger,
    read_ledger,
)
from ingest.reading import REQUIRED_COLUMNS, SchemaError, check_columns
from ingest.run import ingest

_SKIPPED_SUFFIXES = (".checksum", ".tmp", ".part")
"""Not trade files: Binance's ``.CHECKSUM`` companions, files still being written."""


@dataclass(frozen=True)
class Entry:
    """A file of the landing zone as listed: no content read yet."""

    path: str
    size: int
    modified_at: datetime


class Landing:
    """A landing zone: a local directory or an S3 prefix, listed and read the same way."""

    def __init__(self, location: str, filesystem: pafs.FileSystem, root: str) -> None:
        self.location, self._fs, self._root = location, filesystem, root.rstrip("/")

    @classmethod
    def at(cls, location: str, s3: Callable[[], pafs.FileSystem] | None = None) -> Landing:
        """The landing zone at ``location`` (a directory, or ``s3://bucket/prefix`` read with
        the file system ``s3()`` gives)."""
        if location.startswith("s3://"):
            if s3 is None:
                raise ValueError(f"{location!r} is on S3 but no S3 settings were given")
            return cls(location, s3(), location.removeprefix("s3://"))
        root = Path(location).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(
                f"landing zone {location!r} is not a directory; create it or set OHLCV_LANDING"
            )
        return cls(str(root), pafs.LocalFileSystem(), str(root))

    def uri(self, path: str) -> str:
        return f"s3://{path}" if self.location.startswith("s3://") else path

    def files(self) -> list[Entry]:
        """Every trade file below the location, oldest first (then by path)."""
        selector = pafs.FileSelector(self._root, recursive=True, allow_not_found=True)
        found = []
        for info in self._fs.get_file_info(selector):
            name = info.base_name
            if info.type != pafs.FileType.File or name.startswith((".", "_")):
                continue
            if name.lower().endswith(_SKIPPED_SUFFIXES):
                continue
            mtime = info.mtime or datetime.fromtimestamp(0, UTC)
            found.append(Entry(self.uri(info.path), int(info.size or 0), mtime.astimezone(UTC)))
        # An object store may list a "directory" as an object of its own (a marker): not a file.
        folders = {e.path.rsplit("/", 1)[0] for e in found}
        files = [e for e in found if e.path not in folders]
        return sorted(files, key=lambda e: (e.modified_at, e.path))

    def open(self, path: str) -> BinaryIO:
        return self._fs.open_input_file(path.removeprefix("s3://"))  # type: ignore[return-value]

    def checksum(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.open(path) as f:
            while block := f.read(1 << 20):
                digest.update(block)
                pause_point("mid-file")
        return digest.hexdigest()


@dataclass
class FileState:
    """What the ledger and the listing say of one path."""

    entry: Entry
    state: str
    """``pending``, ``changed`` (pending again: other content than was ingested),
    ``ingested`` or ``failed``."""
    record: Record | None = None
    """The ledger's newest row for the path."""


@dataclass
class PassResult:
    """What one pass did."""

    ingested: list[Record] = field(default_factory=list)
    failed: list[Record] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    """Paths ingested again because their content changed since they were ingested."""
    left: int = 0
    """Pending files left for the next pass (beyond the pass's bounds)."""
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    seconds: float = 0.0


def file_states(landing: Landing, records: list[Record]) -> list[FileState]:
    """Each listed file's state, oldest first. A file whose path, size and modification time
    match its newest ledger row is taken as that row's content without being read; any other
    is checksummed only when a pass ingests it."""
    newest: dict[str, Record] = {}
    for r in records:
        newest[r.identity.path] = r
    states = []
    for entry in landing.files():
        record = newest.get(entry.path)
        if record is None:
            states.append(FileState(entry, "pending"))
        elif record.identity.size == entry.size and record.modified_at == entry.modified_at:
            states.append(FileState(entry, record.status, record))
        else:
            states.append(FileState(entry, "changed", record))
    return states


def pause_point(name: str) -> None:
    """Tests stop a pass here (kill -9 at a known point); a no-op unless they ask."""
    if os.environ.get("OHLCV_TEST_PAUSE_AT") == name:  # the tests' one hook
        print(f"paused at {name}", flush=True)
        time.sleep(3600)


def run_pass(
    catalog: Catalog,
    namespace: str,
    landing: Landing,
    *,
    max_files: int,
    max_bytes: int,
    batch_rows: int,
    fmt: str | None = None,
    exchange: str | None = None,
) -> PassResult:
    """One pass over ``landing``: ingest every file not yet ingested, oldest first, within
    ``max_files`` and ``max_bytes`` (at least one file), in batches of about ``batch_rows``."""
    use_reusing_memory_pool()
    started = time.monotonic()
    ledger = ensure_ledger(catalog, namespace)
    records = read_ledger(ledger)
    known = {(r.identity, r.status) for r in records}
    since = records[-1].recorded_at if records else None
    committed = committed_batches(catalog, namespace, since)
    todo = [s for s in file_states(landing, records) if s.state in ("pending", "changed")]
    chosen: list[FileState] = []
    total = 0
    for state in todo:
        if chosen and (len(chosen) >= max_files or total + state.entry.size > max_bytes):
            break
        chosen.append(state)
        total += state.entry.size
    result = PassResult(left=len(todo) - len(chosen))
    batch = _Batch()
    for state in chosen:
        entry = state.entry
        identity = Identity(entry.path, entry.size, landing.checksum(entry.path))
        if (identity, INGESTED) in known or (identity, FAILED) in known:
            # Same content under a new modification time: nothing to ingest, noted once more.
            previous = next(r for r in reversed(records) if r.identity == identity)
            batch.done.append(_again(previous, entry))
            continue
        if state.state == "changed" and state.record and state.record.identity != identity:
            result.changed.append(entry.path)
        try:
            feed = read_feed(partial(landing.open, entry.path), entry.path, fmt, exchange)
        except (SchemaError, OSError) as e:
            batch.done.append(_failed(identity, entry, e))
            continue
        batch.add(identity, entry, feed, committed.get(identity))
        if batch.rows >= batch_rows:
            _ingest_batch(catalog, namespace, batch, result)
            batch = _Batch()
    _ingest_batch(catalog, namespace, batch, result)
    for records_done in (result.ingested, result.failed):
        records_done.sort(key=lambda r: r.recorded_at)
    result.seconds = time.monotonic() - started
    return result


@dataclass
class _Batch:
    identities: list[Identity] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    feeds: list[Feed] = field(default_factory=list)
    recovered: list[int | None] = field(default_factory=list)
    done: list[Record] = field(default_factory=list)
    """Records of files settled without an ingest (failed, or unchanged content)."""
    rows: int = 0

    def add(self, identity: Identity, entry: Entry, feed: Feed, recovered: int | None) -> None:
        self.identities.append(identity)
        self.entries.append(entry)
        self.feeds.append(feed)
        self.recovered.append(recovered)
        self.rows += feed.table.num_rows


def _ingest_batch(catalog: Catalog, namespace: str, batch: _Batch, result: PassResult) -> None:
    """Ingest a batch's files in one ``trades`` commit; when a file's values cannot be parsed,
    each file on its own, so only the bad one fails."""
    records = list(batch.done)
    if batch.feeds:
        try:
            records += _ingest_files(catalog, namespace, batch, range(len(batch.feeds)), result)
        except SchemaError:
            for i in range(len(batch.feeds)):
                try:
                    records += _ingest_files(catalog, namespace, batch, [i], result)
                except SchemaError as e:
                    records.append(_failed(batch.identities[i], batch.entries[i], e))
    pause_point("before-ledger")
    append_records(ensure_ledger(catalog, namespace), records)
    for r in records:
        (result.ingested if r.status == INGESTED else result.failed).append(r)


def _ingest_files(
    catalog: Catalog, namespace: str, batch: _Batch, which: Iterable[int], result: PassResult
) -> list[Record]:
    chosen = list(which)
    tables = [_own_columns(batch.feeds[i].table) for i in chosen]
    raw = _concatenated(tables)
    names = pa.array([batch.identities[i].path for i in chosen], pa.large_string())
    rows = [t.num_rows for t in tables]
    codes = np.repeat(np.arange(len(tables), dtype=np.int32), rows)  # each row's file
    source = pa.DictionaryArray.from_arrays(pa.array(codes), names)
    batch_id = uuid.uuid4().hex
    identities = [batch.identities[i] for i in chosen]
    pause_point("before-append")
    done = ingest(
        catalog,
        namespace,
        raw,
        source=source,
        properties=batch_properties(batch_id, identities),
        synthesize_missing_ids=np.repeat(
            np.array([batch.feeds[i].format in IDS_MAY_BE_MISSING for i in chosen], dtype=bool),
            rows,
        ),
    )
    pause_point("after-append")
    result.accepted += done.accepted
    result.duplicates += done.duplicates
    result.rejected += done.rejected
    now = datetime.now(UTC)
    records = []
    for i in chosen:
        snapshot = done.trades_snapshot_id or batch.recovered[i]
        recovered = batch.recovered[i] is not None
        records.append(
            Record(
                batch.identities[i],
                batch.entries[i].modified_at,
                INGESTED,
                "recovered: its trades were committed before a crash" if recovered else None,
                batch.feeds[i].format,
                batch.feeds[i].table.num_rows,
                batch_id,
                batch.recovered[i] if recovered else snapshot,
                now,
            )
        )
    return records


def _own_columns(table: pa.Table) -> pa.Table:
    check_columns(table)
    return table.select(list(REQUIRED_COLUMNS))


def _concatenated(tables: list[pa.Table]) -> pa.Table:
    """One table of the files' rows; a column whose type differs between files becomes text
    (what every parser reads exactly), so files of different formats share a batch."""
    if len(tables) == 1:
        return tables[0]
    columns = {}
    for name in REQUIRED_COLUMNS:
        parts = [t.column(name) for t in tables]
        if len({p.type for p in parts}) > 1:
            parts = [decoded_text(p) for p in parts]
        columns[name] = pa.chunked_array([c for p in parts for c in p.chunks], type=parts[0].type)
    return pa.table(columns)


def decoded_text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as large strings (dictionary-encoded ones decoded first)."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return values.cast(pa.large_string())


def _failed(identity: Identity, entry: Entry, error: Exception) -> Record:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return Record(
        identity, entry.modified_at, FAILED, reason, None, None, None, None, datetime.now(UTC)
    )


def _again(previous: Record, entry: Entry) -> Record:
    """The same content seen with another modification time (touched, copied again)."""
    return Record(
        previous.identity,
        entry.modified_at,
        previous.status,
        previous.reason,
        previous.format,
        previous.rows,
        previous.batch_id,
        previous.trades_snapshot_id,
        datetime.now(UTC),
    )


def landing_status(catalog: Catalog, namespace: str, landing: Landing) -> list[FileState]:
    """Each listed file's state (pending, changed, ingested, failed), oldest first."""
    ledger = ensure_ledger(catalog, namespace)
    return file_states(landing, read_ledger(ledger))
