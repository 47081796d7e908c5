"""Writing a run: MERGE the changed candles, or overwrite a first fill, with the progress.

Every write carries the run's progress (the watermark) as snapshot properties of the same
commit; a run that changed no candle but read new trades records it in an empty commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from spark_jobs.candles import CANDLE_COLUMNS
from spark_jobs.reads import in_ranges, on_branch
from spark_jobs.results import RunResult
from spark_jobs.snapshots import (
    Progress,
    branch_snapshot_id,
    snapshot_properties,
    snapshot_summary,
)


def merge_collected(spark: SparkSession, target: str, compared: pa.Table, after: Progress) -> None:
    """:func:`write_changes` from the diff in the client: its changed rows travel with the
    MERGE (a local relation), with the progress in the snapshot summary."""
    change = compared.column("_change")
    changed = compared.filter(pc.not_equal(change, "unchanged")).select(
        [*CANDLE_COLUMNS, "computed_at"]
    )
    starts = pc.min_max(changed.column("window_start")).as_py()
    _merge(
        spark,
        target,
        spark.createDataFrame(changed),
        (starts["min"], starts["max"]),
        after.properties(),
    )


def write_first_fill(
    spark: SparkSession,
    table: str,
    branch: str | None,
    fresh: DataFrame,
    result: RunResult,
    after: Progress,
) -> None:
    """Write the candles of windows that hold none yet, in one pass, with ``after``.

    An overwrite of exactly the run's windows, not an append: should another writer have
    filled some of them meanwhile, their candles are replaced (or the commit fails on a file
    that straddles the range), never duplicated. The count comes from the commit's summary.
    """
    target = on_branch(table, branch)
    options = {f"snapshot-property.{k}": v for k, v in after.properties().items()}
    fresh.writeTo(target).options(**options).overwrite(
        in_ranges(F.col("window_start"), result.ranges)
    )
    snapshot = branch_snapshot_id(spark, table, branch or "main")
    assert snapshot is not None
    summary = snapshot_summary(spark, table, snapshot)
    result.inserted = result.windows_recomputed = int(summary.get("added-records", 0))
    result.candle_snapshot_id = snapshot
    result.watermark = after.watermark
    result.notes.append("first fill: no stored candle in these windows, written without a diff")


def write_changes(
    spark: SparkSession,
    target: str,
    compared: DataFrame,
    groups: dict[str, Row],
    after: Progress,
) -> None:
    """MERGE the inserted and updated candles, with the progress in the snapshot summary."""
    changed = compared.where(F.col("_change") != "unchanged").select(*CANDLE_COLUMNS, "computed_at")
    written = [groups[c] for c in ("insert", "update") if c in groups]
    bounds = (min(r["lo"] for r in written), max(r["hi"] for r in written))
    _merge(spark, target, changed, bounds, after.properties())


def record_progress(
    spark: SparkSession,
    table: str,
    branch: str | None,
    before: Progress,
    after: Progress,
    result: RunResult,
) -> None:
    """Commit ``after`` without touching a candle (an empty append), if it moved."""
    if after == before:
        return
    target = on_branch(table, branch)
    options = {f"snapshot-property.{k}": v for k, v in after.properties().items()}
    spark.read.table(target).limit(0).writeTo(target).options(**options).append()
    result.candle_snapshot_id = branch_snapshot_id(spark, table, branch or "main")
    result.watermark = after.watermark


def _merge(
    spark: SparkSession,
    target: str,
    changed: DataFrame,
    bounds: tuple[datetime, datetime],
    properties: dict[str, str],
) -> None:
    """MERGE changed candles (window starts within ``bounds``) into ``target``: replace, insert.

    ``changed`` travels inside the MERGE's own request (Spark Connect's SQL with relations),
    not as a temporary view created and dropped around it: two round trips fewer.
    """
    args: dict[str, Any] = {"target": target, "lo": bounds[0], "hi": bounds[1]}
    # No value is formatted into the text: ``{changed}`` names the DataFrame passed with the
    # query, values travel as parameters.
    query = """
        MERGE INTO IDENTIFIER(:target) AS t
        USING {changed} AS s
        ON t.exchange = s.exchange AND t.symbol = s.symbol AND t.window_start = s.window_start
           AND t.window_start BETWEEN :lo AND :hi
        WHEN MATCHED THEN UPDATE SET *
        WHEN NOT MATCHED THEN INSERT *
    """
    with snapshot_properties(spark, properties):
        spark.sql(query, args=args, changed=changed)
