"""The diff: fresh candles against stored ones, labelled insert / update / unchanged.

Only changed candles are written (a MERGE that matches nothing still commits). The diff also
keeps the old values of updated candles, so a run knows its revisions (candles published after
their window closed, changed by late trades) without another query. A scheduled run's few
windows are diffed in the client (:func:`diff_collected`), a larger run on the server.
"""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

from core.tables import CANDLE_KEY, CANDLE_VALUE_COLUMNS, REVISED_COLUMNS
from spark_jobs.candles import CANDLE_COLUMNS
from spark_jobs.results import RunResult

MAX_REVISIONS_KEPT = 100_000
"""Revisions a run keeps for the record (all are counted): a backfill that rewrites history
should not pull millions of rows into the client."""


def compare(fresh: DataFrame, existing: DataFrame) -> DataFrame:
    """Label each fresh candle insert / update / unchanged against the stored one, and flag
    the updates that revise a candle published after its window closed (``_revision``; a
    candle published while its window was open is expected to grow), keeping the old values."""
    stored = existing.select(
        *[F.col(c).alias(f"_old_{c}") for c in (*CANDLE_KEY, *REVISED_COLUMNS)]
    )
    on = [fresh[c] == stored[f"_old_{c}"] for c in CANDLE_KEY]
    same = F.lit(True)
    for c in CANDLE_VALUE_COLUMNS:
        same = same & fresh[c].eqNullSafe(stored[f"_old_{c}"])
    change = (
        F.when(stored[f"_old_{CANDLE_KEY[0]}"].isNull(), F.lit("insert"))
        .when(same, F.lit("unchanged"))
        .otherwise(F.lit("update"))
    )
    revision = (change == F.lit("update")) & (
        stored["_old_computed_at"] >= stored["_old_window_end"]
    )
    return fresh.join(stored, on, "left").select(
        *CANDLE_COLUMNS,
        "computed_at",
        change.alias("_change"),
        F.coalesce(revision, F.lit(False)).alias("_revision"),
        *[stored[f"_old_{c}"] for c in REVISED_COLUMNS],
    )


def count_changes(compared: DataFrame, result: RunResult) -> dict[str, Row]:
    """Counts per change into ``result``, in one pass that also gives each change's bounds."""
    groups = {
        r["_change"]: r
        for r in compared.groupBy("_change")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.min("window_start").alias("lo"),
            F.max("window_start").alias("hi"),
            F.sum(F.col("_revision").cast("long")).alias("revised"),
        )
        .collect()
    }
    counts = {change: int(r["n"]) for change, r in groups.items()}
    result.inserted = counts.get("insert", 0)
    result.updated = counts.get("update", 0)
    result.unchanged = counts.get("unchanged", 0)
    result.windows_recomputed = result.inserted + result.updated + result.unchanged
    result.revised = sum(int(r["revised"] or 0) for r in groups.values())
    return groups


def _note_revisions_kept(result: RunResult) -> None:
    if result.revised > MAX_REVISIONS_KEPT:
        result.notes.append(
            f"{result.revised} candles revised; the first {MAX_REVISIONS_KEPT} (oldest windows "
            "first) are recorded in candle_revisions"
        )


def revised_candles(compared: DataFrame, result: RunResult) -> pa.Table:
    """The revised candles: key, then ``old_<c>`` and ``new_<c>`` for each revised column.

    Arrow, not Rows: collected timestamps would come back naive, in local time.
    """
    _note_revisions_kept(result)
    pairs = [
        column
        for c in REVISED_COLUMNS
        for column in (F.col(f"_old_{c}").alias(f"old_{c}"), F.col(c).alias(f"new_{c}"))
    ]
    return (
        compared.where(F.col("_revision"))
        .select(*CANDLE_KEY, *pairs)
        .orderBy("window_start", "exchange", "symbol")
        .limit(MAX_REVISIONS_KEPT)
        .toArrow()
    )


COLLECTED_CANDLES_MAX = 50_000
"""A run that read at most this many trades (so computed at most this many candles) takes its
diff into the client (:func:`diff_collected`); a larger one is counted and merged on the
server from a cached frame."""


def to_arrow(frame: DataFrame) -> pa.Table:
    """``frame.toArrow()``, without the schema request Spark Connect's toArrow sends first.

    pyspark 4.1's Connect ``toArrow`` asks the server for the schema (planning the whole query,
    a round trip) only to cast the result to the Arrow schema it already arrives in.
    """
    to_table = getattr(frame, "_to_table", None)
    if to_table is None:  # a classic session
        return frame.toArrow()
    table, _ = to_table()
    return table


def diff_collected(compared: pa.Table, result: RunResult) -> None:
    """:func:`count_changes` and :func:`revised_candles` on the diff taken into the client.

    The same figures from the same rows: a scheduled run's diff is a few hundred candles, and
    counting them on the server, caching them for the MERGE and reading the revisions back
    cost a round trip each (and a cache) where one collect brings them all.
    """
    changes = compared.column("_change").to_pylist()
    result.inserted = changes.count("insert")
    result.updated = changes.count("update")
    result.unchanged = changes.count("unchanged")
    result.windows_recomputed = len(changes)
    revised = compared.filter(compared.column("_revision"))
    result.revised = revised.num_rows
    if not result.revised:
        return
    _note_revisions_kept(result)
    sources = [*CANDLE_KEY, *(name for c in REVISED_COLUMNS for name in (f"_old_{c}", c))]
    names = [*CANDLE_KEY, *(name for c in REVISED_COLUMNS for name in (f"old_{c}", f"new_{c}"))]
    pairs = revised.select(sources).rename_columns(names)
    order = [("window_start", "ascending"), ("exchange", "ascending"), ("symbol", "ascending")]
    result.revisions = pairs.sort_by(order).slice(0, MAX_REVISIONS_KEPT)
