"""What users run is what the library does: the CLI's live read applies the instruments'
calendars as ``read_candles`` does, and a backfill sized by trades hands every chunk's run the
trades it counted (issue 27's two bugs)."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from cli.main import app
from core.tables import Tables
from core.timeframes import TIMEFRAMES
from settings import Settings
from tests.support.environment import export_settings
from tests.support.oracle import diff, expected_candles, stored_candles
from tests.support.trades import EXCHANGE, START, deliver, random_trades

ONE_HOUR = TIMEFRAMES["1h"]
ONE_MINUTE = TIMEFRAMES["1m"]
KOLKATA_OFFSET = timedelta(hours=5, minutes=30)


def test_the_live_tail_of_the_candles_command_uses_the_instruments_calendars(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    run_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given: trades of an exchange that keeps Kolkata's hours (UTC+05:30), nothing published
    end = START + timedelta(hours=6)
    trades = random_trades(random.Random(61), START, end, 300, first_id=1)
    deliver(catalog, tables, trades, now=end)
    calendars = json.dumps([{"exchange": EXCHANGE, "zone": "Asia/Kolkata"}])
    export_settings(monkeypatch, run_settings.model_copy(update={"calendars": calendars}))

    # When: the hourly candles are read with the live tail, as a user does
    done = CliRunner().invoke(app, ["candles", "BTC-USD", "--tf", "1h", "--live"])

    # Then: every window is a Kolkata hour (it starts at half past in UTC), provisional, and
    # together they hold every BTC-USD trade
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows, done.output
    starts = [pd.Timestamp(r["window_start"]) for r in rows]
    local = [(s + KOLKATA_OFFSET) for s in starts]
    assert all(t.minute == 0 and t.second == 0 for t in local), starts
    assert {r["provisional"] for r in rows} == {"true"}
    assert sum(int(r["trade_count"]) for r in rows) == sum(t.symbol == "BTC-USD" for t in trades)


def test_a_backfill_sized_by_trades_gives_each_chunk_run_the_trades_it_counted(
    spark: SparkSession, catalog: Catalog, tables: Tables, flow_env: Settings
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    # Given: three hours of trades, busy then quiet
    rng = random.Random(62)
    end = START + timedelta(hours=3)
    trades = random_trades(rng, START, START + timedelta(hours=1), 200, first_id=1)
    trades += random_trades(rng, START + timedelta(hours=1), end, 150, first_id=10_000)
    deliver(catalog, tables, trades, now=end)

    # When: `ohlcv backfill --chunk-trades` runs
    args = ["backfill", "1m", "--start", START.isoformat(), "--end", end.isoformat()]
    began = datetime.now(UTC)
    done = CliRunner().invoke(app, [*args, "--chunk-trades", "150"])
    assert done.exit_code == 0, done.output
    chunks = int(done.output.split(" chunks complete")[0].rsplit(" ", 1)[-1])

    # Then: each chunk's flow run was handed its trades' count (so it did not count them
    # again), and the count is right. Only the chunk runs that started during the command: the
    # session's Prefect server also holds other tests' runs (a full suite once showed a run of
    # the 1m flow without chunk parameters among them)
    with get_client(sync_client=True) as client:
        started = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[ONE_MINUTE.flow_name])),
            flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=began)  # type: ignore[arg-type]
            ),
            sort=FlowRunSort.START_TIME_DESC,
        )
    runs = [r for r in started if "window_start" in r.parameters]
    seen = [(r.name, r.start_time, r.parameters) for r in started]
    assert len(runs) == chunks >= 2, seen
    for run in runs:
        first = pd.Timestamp(run.parameters["window_start"])
        last = pd.Timestamp(run.parameters["window_end"])
        inside = [t for t in trades if first <= pd.Timestamp(t.ts) < last]
        assert run.parameters.get("chunk_trades") == len(inside), run.parameters
        ids = [t.trade_id for t in inside]
        assert run.parameters.get("chunk_trade_ids") == ([min(ids), max(ids)] if ids else None)
    # and the candles are the oracle's
    stored = stored_candles(spark, tables.candles(ONE_MINUTE))
    assert not diff(expected_candles(trades, ONE_MINUTE), stored)
