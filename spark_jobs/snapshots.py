"""Iceberg metadata read over Spark: branch heads, snapshot summaries, the late-trade watermark.

What a candle table's ``main`` reflects travels in the summary of its current snapshot, so it
commits atomically with the candles (:class:`Progress`): the watermark
(``WATERMARK_PROPERTY``), the ``trades`` snapshot whose trades it fully reflects, and, while a
large catch-up proceeds in bounded steps, the snapshot it catches up to and how far it got.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from core.tables import Tables
from core.time import from_us, to_us
from core.timeframes import TIMEFRAMES

WATERMARK_PROPERTY = "ohlcv.trades-snapshot-id"
CATCH_UP_TARGET_PROPERTY = "ohlcv.catch-up-snapshot-id"
CATCH_UP_THROUGH_PROPERTY = "ohlcv.catch-up-through-us"
_SNAPSHOT_PROPERTY_CONF = "spark.sql.iceberg.snapshot-property."


@dataclass(frozen=True)
class Progress:
    """Which trades a candle table reflects.

    ``watermark``: every trade of this ``trades`` snapshot is reflected (None: none yet).
    While a catch-up is under way, the windows touched by trades appended after the watermark
    up to ``catch_up_target`` that start before ``catch_up_through`` are reflected too.
    """

    watermark: int | None = None
    catch_up_target: int | None = None
    catch_up_through: datetime | None = None

    @property
    def catching_up(self) -> bool:
        return self.catch_up_target is not None

    def snapshots(self) -> set[int]:
        """The ``trades`` snapshots the next runs will read from (maintenance must keep them)."""
        return {s for s in (self.watermark, self.catch_up_target) if s is not None}

    def properties(self) -> dict[str, str]:
        """Snapshot summary properties that record this progress."""
        props = {}
        if self.watermark is not None:
            props[WATERMARK_PROPERTY] = str(self.watermark)
        if self.catch_up_target is not None and self.catch_up_through is not None:
            props[CATCH_UP_TARGET_PROPERTY] = str(self.catch_up_target)
            props[CATCH_UP_THROUGH_PROPERTY] = str(to_us(self.catch_up_through))
        return props

    @classmethod
    def from_summary(cls, summary: dict[str, str]) -> Progress:
        def number(key: str) -> int | None:
            return int(summary[key]) if key in summary else None

        through = number(CATCH_UP_THROUGH_PROPERTY)
        target = number(CATCH_UP_TARGET_PROPERTY)
        return cls(
            watermark=number(WATERMARK_PROPERTY),
            catch_up_target=target if through is not None else None,
            catch_up_through=from_us(through) if through is not None and target else None,
        )


def main_snapshot_id(spark: SparkSession, table: str) -> int | None:
    """Snapshot id of the table's ``main`` branch (None for a table never written)."""
    return branch_snapshot_id(spark, table, "main")


def branch_snapshot_id(spark: SparkSession, table: str, branch: str) -> int | None:
    """Snapshot id a branch (or tag) of the table points at (None if it does not exist)."""
    return ref_snapshot_ids(spark, table, branch).get(branch)


def ref_snapshot_ids(spark: SparkSession, table: str, *names: str) -> dict[str, int]:
    """Snapshot ids of these branches or tags, by name, in one query (absent: not there)."""
    rows = (
        spark.read.table(f"{table}.refs")
        .where(F.col("name").isin(*names))
        .select("name", "snapshot_id")
        .collect()
    )
    return {r["name"]: int(r["snapshot_id"]) for r in rows}


def snapshot_summary(spark: SparkSession, table: str, snapshot_id: int) -> dict[str, str]:
    rows = (
        spark.read.table(f"{table}.snapshots")
        .where(F.col("snapshot_id") == F.lit(snapshot_id))
        .select("summary")
        .collect()
    )
    return dict(rows[0]["summary"]) if rows else {}


def _lineage(spark: SparkSession, table: str) -> tuple[int | None, dict[int, Row]]:
    """``main``'s head (None: no ``main``) and every snapshot of the table: parent, operation
    and the summary properties of ours, in one query (the head joined on, not asked for
    separately)."""
    ours = F.map_filter(F.col("summary"), lambda k, _: k.startswith("ohlcv."))
    main = (
        spark.read.table(f"{table}.refs")
        .where(F.col("name") == F.lit("main"))
        .select(F.col("snapshot_id").alias("_main"))
    )
    rows = (
        spark.read.table(f"{table}.snapshots")
        .select("snapshot_id", "parent_id", "operation", ours.alias("ours"))
        .join(main, F.col("snapshot_id") == F.col("_main"), "left")
        .collect()
    )
    heads = [int(r["snapshot_id"]) for r in rows if r["_main"] is not None]
    return (heads[0] if heads else None), {int(r["snapshot_id"]): r for r in rows}


def _below_compactions(lineage: dict[int, Row], head: int | None) -> int | None:
    """``head``, or its newest ancestor that is not a compaction (``replace``) snapshot."""
    while head in lineage and lineage[head]["operation"] == "replace":
        head = lineage[head]["parent_id"]
    return head


def progress_snapshot(spark: SparkSession, table: str) -> tuple[int | None, Progress]:
    """The snapshot of ``main`` that records its progress, and that progress.

    That is ``main``'s head, or, when compactions were committed on top of it (``replace``
    snapshots, which carry no properties of ours), the newest ancestor before them.
    """
    head, lineage = _lineage(spark, table)
    if head is None:
        return None, Progress()
    node = _below_compactions(lineage, head)
    if node is None or node not in lineage:
        return None, Progress()
    return node, Progress.from_summary(dict(lineage[node]["ours"]))


def only_compacted_since(spark: SparkSession, table: str, snapshot_id: int | None) -> bool:
    """True when every snapshot ``main`` gained after ``snapshot_id`` is a compaction."""
    head, lineage = _lineage(spark, table)
    return head != snapshot_id and _below_compactions(lineage, head) == snapshot_id


def progress(spark: SparkSession, table: str) -> Progress:
    """What the candle table's ``main`` reflects (see :class:`Progress`)."""
    return progress_snapshot(spark, table)[1]


def watermark(spark: SparkSession, table: str) -> int | None:
    """The ``trades`` snapshot whose trades the candle table's ``main`` fully reflects."""
    return progress(spark, table).watermark


def head_and_existing(
    spark: SparkSession, table: str, snapshot_ids: set[int]
) -> tuple[int | None, set[int]]:
    """:func:`main_snapshot_id`, and which of ``snapshot_ids`` still exist
    (:func:`snapshot_exists`), in one query."""
    main = (
        spark.read.table(f"{table}.refs")
        .where(F.col("name") == F.lit("main"))
        .select("snapshot_id", F.lit(True).alias("is_main"))
    )
    if snapshot_ids:
        found = (
            spark.read.table(f"{table}.snapshots")
            .where(F.col("snapshot_id").isin(sorted(snapshot_ids)))
            .select("snapshot_id", F.lit(False).alias("is_main"))
        )
        main = main.unionByName(found)
    rows = main.collect()
    heads = [int(r["snapshot_id"]) for r in rows if r["is_main"]]
    return (heads[0] if heads else None), {int(r["snapshot_id"]) for r in rows if not r["is_main"]}


def snapshot_exists(spark: SparkSession, table: str, snapshot_id: int) -> bool:
    """False once the snapshot was expired (or never existed)."""
    snapshots = spark.read.table(f"{table}.snapshots")
    return snapshots.where(F.col("snapshot_id") == F.lit(snapshot_id)).limit(1).count() > 0


def protected_trades_snapshots(spark: SparkSession, tables: Tables) -> set[int]:
    """Every ``trades`` snapshot some candle table's ``main`` still reads from."""
    needed: set[int] = set()
    for tf in TIMEFRAMES.values():
        needed |= progress(spark, tables.candles(tf)).snapshots()
    return needed


@contextmanager
def snapshot_properties(spark: SparkSession, properties: dict[str, str]) -> Iterator[None]:
    """Attach properties to the snapshot of every Iceberg write inside the block."""
    keys = [_SNAPSHOT_PROPERTY_CONF + k for k in properties]
    for key, value in zip(keys, properties.values(), strict=True):
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key in keys:
            spark.conf.unset(key)
