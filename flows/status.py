"""What `ohlcv status` and `ohlcv demo` show: published candles and the last flow runs."""

from __future__ import annotations

from typing import Any

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from core.tables import Tables
from core.timeframes import TIMEFRAMES, Timeframe
from spark_jobs.snapshots import main_snapshot_id, watermark


def published_status(spark: SparkSession, tables: Tables) -> dict[str, list[str]]:
    """Per timeframe: newest published window (UTC), main snapshot, trades snapshot processed."""
    rows: dict[str, list[str]] = {}
    for tf in TIMEFRAMES.values():
        name = tables.candles(tf)
        newest = spark.read.table(name).agg(F.max("window_start").alias("w")).collect()[0]["w"]
        rows[tf.name] = [
            f"{newest:%Y-%m-%d %H:%M}" if newest else "-",
            str(main_snapshot_id(spark, name) or "-"),
            str(watermark(spark, name) or "-"),
        ]
    return rows


def last_flow_runs() -> dict[str, list[str]]:
    """Start time and state of the newest run of each timeframe's flow (Prefect API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    out: dict[str, list[str]] = {}
    with get_client(sync_client=True) as client:
        for tf in TIMEFRAMES.values():
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[tf.flow_name])),
                sort=FlowRunSort.START_TIME_DESC,
                limit=1,
            )
            if runs and runs[0].start_time:
                state = runs[0].state.name if runs[0].state and runs[0].state.name else "-"
                out[tf.name] = [f"{runs[0].start_time:%Y-%m-%d %H:%M:%S}", state]
            else:
                out[tf.name] = ["never", "-"]
    return out


def symbol_summary(spark: SparkSession, tables: Tables, tf: Timeframe) -> list[Row]:
    """Per symbol of one candle table: candles, first/last window, trades, last close."""
    rows: Any = (
        spark.read.table(tables.candles(tf))
        .groupBy("symbol")
        .agg(
            F.count(F.lit(1)).alias("candles"),
            F.date_format(F.min("window_start"), "yyyy-MM-dd HH:mm").alias("first"),
            F.date_format(F.max("window_start"), "yyyy-MM-dd HH:mm").alias("last"),
            F.sum("trade_count").alias("trades"),
            F.max_by("close", "window_start").alias("last_close"),
        )
        .orderBy("symbol")
        .collect()
    )
    return list(rows)
