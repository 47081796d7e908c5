"""Revisions: published candles that a later run changed, recorded in ``candle_revisions``.

A candle is revised when a run changes it after it was published with its window already
closed (``computed_at >= window_end``): a late trade corrected it. A candle published while its
window was still open (the newest window of a scheduled run) is expected to change as trades
arrive, so that is not a revision; ``as_of`` reads show both.

The run's diff already finds the changed candles; it keeps the old values of the revised ones
(:func:`spark_jobs.diff.compare`), so a run without revisions pays nothing: no query, no
commit. A run with revisions appends them once it has published (one small commit to
``candle_revisions``, whose snapshots and files maintenance expires and compacts like any
table's). A crash between the publish and that append loses the record, not a candle: the
candles are as published, and ``as_of`` still shows the change.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.tables import CANDLE_KEY, REVISIONS_SCHEMA, Tables
from core.timeframes import Timeframe

MAX_LISTED = 10
"""Revised windows named in a run's metrics; the rest are counted."""


def record_revisions(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    revisions: pa.Table,
    *,
    revised_at: datetime,
    candle_snapshot_id: int,
    trades_snapshot_id: int | None,
) -> int:
    """Append a published run's revisions to ``candle_revisions``; returns how many."""
    if revisions.num_rows == 0:
        return 0
    stamped = spark.createDataFrame(revisions).select(
        F.lit(tf.name).alias("timeframe"),
        "*",
        F.lit(revised_at).alias("revised_at"),
        F.lit(candle_snapshot_id).cast("long").alias("candle_snapshot_id"),
        F.lit(trades_snapshot_id).cast("long").alias("trades_snapshot_id"),
    )
    stamped.select(*(f.name for f in REVISIONS_SCHEMA.fields)).writeTo(
        tables.candle_revisions
    ).append()
    return revisions.num_rows


def describe_revisions(revisions: pa.Table | None, total: int) -> str:
    """The revised windows in one line for a run's metrics: the first few, then a count."""
    if revisions is None or total == 0:
        return "none"
    rows = revisions.select(list(CANDLE_KEY)).slice(0, MAX_LISTED).to_pylist()
    listed = ", ".join(
        f"{r['exchange']}/{r['symbol']} {r['window_start'].astimezone(UTC):%Y-%m-%dT%H:%M}Z"
        for r in rows
    )
    more = total - len(rows)
    return listed + (f" (+{more} more)" if more > 0 else "")
