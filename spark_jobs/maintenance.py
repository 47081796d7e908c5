"""Table maintenance with Iceberg's own procedures: expire snapshots, compact, clean up.

A pipeline that commits every few minutes makes a snapshot, a manifest list and a metadata file
per commit, and an ingest makes a small data file per partition it touches. Without
maintenance the metadata grows quadratically (every metadata file lists every snapshot) and
reads slow down. Per table, :func:`maintain_table`:

- expires snapshots older than the retention, keeping the newest ``retain_last``, every branch
  head and every unexpired tag (Iceberg keeps referenced snapshots by itself), and, for
  ``trades``, every snapshot from the oldest one a candle table still needs (its watermark or
  catch-up target) on: late trades are found by reading the ``trades`` snapshots appended since
  a watermark, so those must survive; for a candle table, the snapshot that records its
  progress (below any compactions) and the one ``main`` held when the retention window
  began, so ``as_of`` reads (:mod:`read.as_of`) work for every time within the retention;
- compacts small data files in sealed partitions (:func:`_sealed_boundary`): ``trades`` days
  that ended over an hour ago, a candle table's partitions its lookback left over an hour ago.
  Each 1m run adds a small file, so candle tables need it too. A compaction moves ``main``;
  a candle flow that was running meanwhile notices at publish and redoes its run on top
  (:func:`flows.pipeline.run_pipeline`), and its progress is read from below compaction
  snapshots (:func:`progress_snapshot`);
- rewrites the manifests of ``trades`` when it has many;
- the landing ledger (``landing_files``, one small append per landing pass that found files)
  is expired and compacted whole, once a landing pass has created it;
- removes orphan files (leftovers of failed writes) older than a safety margin, so a running
  writer's uncommitted files are never touched.

Every step is a no-op when there is nothing to do: maintaining twice in a row commits nothing
the second time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.tables import CANDLE_REVISIONS, LANDING_FILES, TRADES, TRADES_REJECTED, Tables
from core.time import from_us, utc
from core.timeframes import TIMEFRAMES
from spark_jobs.snapshots import progress_snapshot, protected_trades_snapshots

CANDLE_TABLES = {tf.table: tf for tf in TIMEFRAMES.values()}


@dataclass(frozen=True)
class MaintenancePolicy:
    """How much history to keep and when to compact."""

    snapshot_age: timedelta = timedelta(days=2)
    retain_last: int = 20
    orphan_age: timedelta = timedelta(days=3)
    min_files_to_compact: int = 2
    max_manifests: int = 8
    """Rewrite a table's manifests once its current snapshot has more than this many."""

    def __post_init__(self) -> None:
        # Iceberg's procedure refuses shorter margins: a running writer's files look orphaned.
        if self.orphan_age < timedelta(hours=24):
            raise ValueError(
                f"orphan file age {self.orphan_age} is under 24 hours: a running writer's "
                "files would look like orphans; use at least 24 hours"
            )
        if self.retain_last < 1:
            raise ValueError(f"retain_last={self.retain_last}: keep at least 1 snapshot")


@dataclass(frozen=True)
class TableState:
    """Size of a table's current state and history."""

    snapshots: int
    metadata_files: int
    manifests: int
    data_files: int
    data_bytes: int


@dataclass
class TableMaintenance:
    """What maintenance did to one table."""

    table: str
    before: TableState
    after: TableState
    snapshots_expired: int = 0
    files_compacted: int = 0
    files_written: int = 0
    manifests_rewritten: int = 0
    orphans_removed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.snapshots_expired
            or self.files_compacted
            or self.manifests_rewritten
            or self.orphans_removed
        )


def table_state(spark: SparkSession, table: str) -> TableState:
    """Counts from the table's metadata tables (no data is read)."""
    files = spark.read.table(f"{table}.files").agg(
        F.count(F.lit(1)).alias("n"), F.coalesce(F.sum("file_size_in_bytes"), F.lit(0)).alias("b")
    )
    row = files.collect()[0]
    return TableState(
        snapshots=spark.read.table(f"{table}.snapshots").count(),
        # The log lists the previous metadata files still referenced; +1 for the current one.
        metadata_files=spark.read.table(f"{table}.metadata_log_entries").count(),
        manifests=spark.read.table(f"{table}.manifests").count(),
        data_files=int(row["n"]),
        data_bytes=int(row["b"]),
    )


def maintain(
    spark: SparkSession,
    tables: Tables,
    names: list[str],
    policy: MaintenancePolicy,
    now: datetime,
) -> list[TableMaintenance]:
    """Maintain the named tables of ``tables`` (names as in ``Tables.name``), in order; an
    optional table that does not exist yet is passed over (:func:`existing`)."""
    return [
        maintain_table(spark, tables, name, policy, now) for name in existing(spark, tables, names)
    ]


def maintain_table(
    spark: SparkSession, tables: Tables, name: str, policy: MaintenancePolicy, now: datetime
) -> TableMaintenance:
    """Expire snapshots, compact sealed partitions, rewrite manifests (``trades``), remove
    orphan files; see the module docstring.

    ``now`` is the present of the data: partitions before it (minus a margin) are sealed. Ages
    of snapshots and files are measured on the wall clock, as their commit and modification
    times are (the two differ only when replaying market time, as the soak bench does).
    """
    now = utc(now)
    wall = datetime.now(UTC)
    started = time.monotonic()
    table = tables.name(name)
    done = TableMaintenance(name, table_state(spark, table), table_state(spark, table))
    older_than = wall - policy.snapshot_age
    keep_from = _oldest_needed(spark, tables, name, older_than)
    if keep_from is not None and keep_from < older_than:
        done.notes.append(
            f"kept snapshots from {keep_from:%Y-%m-%d %H:%M:%S} UTC on: the pipeline still "
            "reads from them (a watermark, a candle table's recorded progress, or what main "
            "held when the retention window began, for as-of reads)"
        )
        older_than = keep_from
    done.snapshots_expired = _expire(spark, tables, name, older_than, policy.retain_last)
    # The ledger's rows carry wall-clock times (when a pass recorded a file), not market time.
    column, sealed = _sealed_boundary(name, wall if name == LANDING_FILES else now)
    done.files_compacted, done.files_written = _compact(
        spark, tables, name, f"{column} < TIMESTAMP '{sealed:%Y-%m-%d %H:%M:%S}'", policy
    )
    if name == TRADES and (done.before.manifests > policy.max_manifests or done.files_compacted):
        done.manifests_rewritten = _rewrite_manifests(spark, tables, name)
    done.orphans_removed = _remove_orphans(spark, tables, name, wall - policy.orphan_age)
    done.after = table_state(spark, table)
    done.seconds = round(time.monotonic() - started, 2)
    return done


OPTIONAL_TABLES = (LANDING_FILES,)
"""Tables ``ensure_tables`` does not make: the landing ledger exists once a landing pass ran."""


def all_tables() -> list[str]:
    """Every table of the project, in the order maintenance visits them."""
    return [
        TRADES,
        TRADES_REJECTED,
        *(tf.table for tf in TIMEFRAMES.values()),
        CANDLE_REVISIONS,
        *OPTIONAL_TABLES,
    ]


def existing(spark: SparkSession, tables: Tables, names: list[str]) -> list[str]:
    """``names`` without the optional tables that do not exist (yet)."""
    return [
        name
        for name in names
        if name not in OPTIONAL_TABLES or spark.catalog.tableExists(tables.name(name))
    ]


def chosen_tables(names: list[str] | None) -> list[str]:
    """The tables to maintain: ``names`` (checked), or all of them."""
    if not names:
        return all_tables()
    unknown = sorted(set(names) - set(all_tables()))
    if unknown:
        raise ValueError(f"unknown table(s) {', '.join(unknown)}: use {', '.join(all_tables())}")
    return names


def _oldest_needed(
    spark: SparkSession, tables: Tables, name: str, cutoff: datetime
) -> datetime | None:
    """Commit time of the oldest snapshot of table ``name`` the pipeline still reads from
    (for a candle table, also ``main``'s snapshot at ``cutoff``: as-of reads need it)."""
    table = tables.name(name)
    if name == TRADES:
        needed = protected_trades_snapshots(spark, tables)
    elif name in CANDLE_TABLES:
        candidates = (progress_snapshot(spark, table)[0], _main_at(spark, table, cutoff))
        needed = {s for s in candidates if s is not None}
    else:
        return None
    if not needed:
        return None
    row = (
        spark.read.table(f"{table}.snapshots")
        .where(F.col("snapshot_id").isin(sorted(needed)))
        .agg(F.unix_micros(F.min("committed_at")).alias("at"))
        .collect()[0]
    )
    # Microseconds, not a timestamp: pyspark hands timestamps back naive, in local time.
    return from_us(row["at"]) if row["at"] is not None else None


def _main_at(spark: SparkSession, table: str, at: datetime) -> int | None:
    """The snapshot ``main`` held at ``at`` (its snapshot log), None if none is known.

    Expiry drops the log entries of the snapshots it removes, and everything before them, so
    keeping this snapshot keeps the log, and with it every as-of read, from ``at`` on.
    """
    rows = (
        spark.read.table(f"{table}.history")
        .where(F.col("made_current_at") <= F.lit(at))
        .orderBy(F.desc("made_current_at"))
        .limit(1)
        .collect()
    )
    return int(rows[0]["snapshot_id"]) if rows else None


SEAL_MARGIN = timedelta(hours=1)
"""How long after a partition's last scheduled write it counts as sealed (late trades may still
land in it later: a compaction never loses them, see the module docstring)."""


def _sealed_boundary(name: str, now: datetime) -> tuple[str, datetime]:
    """(column, boundary): partitions wholly before the boundary are no longer written to by
    a scheduled run. ``trades`` days are sealed an hour after they end; a candle table's
    partitions an hour after its lookback has left them; the landing ledger, all of it."""
    if name == LANDING_FILES:
        # A few hundred bytes a pass, read whole by every pass: everything recorded so far
        # is compacted (an append meanwhile does not conflict with a rewrite).
        return "recorded_at", now
    if name not in CANDLE_TABLES:
        column = {TRADES: "ts", CANDLE_REVISIONS: "revised_at"}.get(name, "rejected_at")
        return column, (now - SEAL_MARGIN).replace(hour=0, minute=0, second=0, microsecond=0)
    tf = CANDLE_TABLES[name]
    reach = now - tf.lookback - SEAL_MARGIN
    start = reach.replace(minute=0, second=0, microsecond=0)
    if tf.partition in ("day", "month", "year"):
        start = start.replace(hour=0)
    if tf.partition in ("month", "year"):
        start = start.replace(day=1)
    if tf.partition == "year":
        start = start.replace(month=1)
    return "window_start", start


def _system(tables: Tables) -> str:
    """Where Iceberg's procedures live (the catalog is a validated identifier, see Settings).

    Procedures get qualified table names: given "namespace.name", Iceberg first tries the
    namespace as a catalog and logs that failure with a stack trace on every call.
    """
    return f"`{tables.catalog}`.system"


def _expire(
    spark: SparkSession, tables: Tables, name: str, older_than: datetime, retain_last: int
) -> int:
    before = spark.read.table(f"{tables.name(name)}.snapshots").count()
    spark.sql(
        f"CALL {_system(tables)}.expire_snapshots("
        "table => :table, older_than => :older_than, retain_last => :retain_last)",
        args={
            "table": tables.name(name),
            "older_than": older_than,
            "retain_last": retain_last,
        },
    ).collect()
    return before - spark.read.table(f"{tables.name(name)}.snapshots").count()


def _compact(
    spark: SparkSession, tables: Tables, name: str, where: str, policy: MaintenancePolicy
) -> tuple[int, int]:
    row = spark.sql(
        f"CALL {_system(tables)}.rewrite_data_files(table => :table, where => :where, "
        "options => map('min-input-files', :min_files, 'partial-progress.enabled', 'true'))",
        args={
            "table": tables.name(name),
            "where": where,
            "min_files": str(policy.min_files_to_compact),
        },
    ).collect()[0]
    return int(row["rewritten_data_files_count"]), int(row["added_data_files_count"])


def _rewrite_manifests(spark: SparkSession, tables: Tables, name: str) -> int:
    row = spark.sql(
        f"CALL {_system(tables)}.rewrite_manifests(table => :table)",
        args={"table": tables.name(name)},
    ).collect()[0]
    return int(row["rewritten_manifests_count"])


def _remove_orphans(spark: SparkSession, tables: Tables, name: str, older_than: datetime) -> int:
    rows = spark.sql(
        f"CALL {_system(tables)}.remove_orphan_files(table => :table, older_than => :older_than)",
        args={"table": tables.name(name), "older_than": older_than},
    ).collect()
    return len(rows)
