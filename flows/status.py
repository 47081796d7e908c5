"""What `ohlcv status` and `ohlcv demo` show: published candles and the last flow runs."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from core.tables import Tables
from core.time import from_us
from core.timeframes import TIMEFRAMES, Timeframe
from settings import Settings
from spark_jobs.snapshots import main_snapshot_id, watermark


def published_status(spark: SparkSession, tables: Tables) -> dict[str, list[str]]:
    """Per timeframe: newest published window (UTC), main snapshot, trades snapshot processed."""
    rows: dict[str, list[str]] = {}
    for tf in TIMEFRAMES.values():
        name = tables.candles(tf)
        # Microseconds, not a timestamp: pyspark hands timestamps back naive, in local time.
        newest = (
            spark.read.table(name)
            .agg(F.unix_micros(F.max("window_start")).alias("w"))
            .collect()[0]["w"]
        )
        rows[tf.name] = [
            f"{from_us(newest):%Y-%m-%d %H:%M}" if newest is not None else "-",
            str(main_snapshot_id(spark, name) or "-"),
            str(watermark(spark, name) or "-"),
        ]
    return rows


FINISHED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
"""Prefect state types of a run that is over."""


def last_flow_runs() -> dict[str, list[str]]:
    """Per timeframe: the last finished run (end time, state, duration) and the next scheduled
    one, from the Prefect API (future scheduled runs never count as the last run)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    def of_state(*types: str) -> FlowRunFilter:
        wanted = [StateType(t) for t in types]
        return FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=wanted)))

    out: dict[str, list[str]] = {}
    with get_client(sync_client=True) as client:
        for tf in TIMEFRAMES.values():
            flow = FlowFilter(name=FlowFilterName(any_=[tf.flow_name]))
            last = client.read_flow_runs(
                flow_filter=flow,
                flow_run_filter=of_state(*FINISHED),
                sort=FlowRunSort.END_TIME_DESC,
                limit=1,
            )
            upcoming = client.read_flow_runs(
                flow_filter=flow,
                flow_run_filter=of_state("SCHEDULED"),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=1,
            )
            row = ["never", "-", "-"]
            ended = last[0].end_time if last else None
            if last and ended:
                run = last[0]
                state = run.state.name if run.state and run.state.name else "-"
                took = (ended - run.start_time).total_seconds() if run.start_time else None
                row = [
                    f"{ended.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
                    state,
                    f"{took:.1f} s" if took is not None else "-",
                ]
            when = upcoming[0].expected_start_time if upcoming else None
            row.append(f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if when else "-")
            out[tf.name] = row
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


def status_rows(settings: Settings) -> dict[str, list[str]]:
    """`ohlcv status`: per timeframe, what is published and the last flow run."""
    from infra.session import session

    with session(settings) as spark:
        rows = published_status(spark, Tables(settings.catalog_name, settings.namespace))
    for name, last in last_flow_runs().items():
        rows[name] += last
    return rows
