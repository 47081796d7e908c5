"""`backfill all`: every timeframe from one pass over the trades, against the oracle; the
checks that keep a rollup honest (trades sample, one read of the audit branch) catch a
tampered branch; small tails join the chunk before them."""

from __future__ import annotations

import json
import random
from datetime import date, time, timedelta
from decimal import Decimal

import pytest
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables
from core.timeframes import TIMEFRAMES, Timeframe
from expectations.validation import ValidationFailed
from flows import pipeline
from flows.backfill import run_backfill, run_chunk_pipelines
from flows.pipeline import RunRequest, Steps
from settings import Settings
from spark_jobs import jobs, snapshots, wap
from tests.support.oracle import (
    LocalTime,
    Trade,
    diff,
    expected_local_candles,
    stored_candles,
)
from tests.support.trades import START, assert_matches_oracle, deliver, random_trades

ALL = list(TIMEFRAMES.values())
NY, KOLKATA = "America/New_York", "Asia/Kolkata"
DECLARED = [
    {"exchange": "us", "symbol": "AAPL", "zone": NY, "session": "09:30-16:00"},
    {"exchange": "nse", "zone": KOLKATA},
]
LOCAL = {
    ("us", "AAPL"): LocalTime(NY, (time(9, 30), time(16)), frozenset(range(5))),
    ("nse", "INFY"): LocalTime(KOLKATA),
}


def _every_window(settings: Settings) -> Settings:
    # The full check of the test suite: every rolled-up window recomputed from the trades.
    return settings.model_copy(
        update={"validation_sample_windows": 1_000_000, "validation_sample_trades": 10**12}
    )


def test_backfill_all_equals_the_oracle_for_every_timeframe_in_one_pass(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    rng = random.Random(30)
    # Given: three days of trades from 22:00 (so two hours of a first day), then a small
    # tail of 60 trades in the first hour of a fifth day
    end = START + timedelta(days=3, hours=3)
    trades = random_trades(rng, START, START + timedelta(days=3), 2400, first_id=1)
    tail_start = START + timedelta(days=3, hours=2)
    trades += random_trades(rng, tail_start, end, 60, first_id=50_000)
    deliver(catalog, tables, trades, now=end)
    pinned = snapshots.main_snapshot_id(spark, tables.trades)

    # When: all five timeframes are backfilled in chunks of about 800 trades
    backfill = run_backfill(
        _every_window(run_settings), ALL, START, end, chunk_trades=800, spark=spark
    )
    done = list(backfill)

    # Then: whole days per chunk, none under a quarter of 800 trades: the first day (two
    # hours of trades) joined the next, the last (the 60-trade tail) the one before it
    sizes = [backfill.requests[c].stats for c in backfill.chunks]
    assert [c.end - c.start for c in backfill.chunks] == [
        timedelta(days=2),
        timedelta(days=1),
        timedelta(days=2),
    ]
    assert all(s is not None and s.trades >= 200 for s in sizes)
    assert sum(s.trades for s in sizes if s is not None) == len(trades)
    # every timeframe's candles equal the oracle, each chunk read its trades once for all five
    assert_matches_oracle(spark, tables, trades, ALL)
    for chunk in done:
        assert [m.timeframe for m in chunk.runs] == [tf.name for tf in ALL]
        for metrics in chunk.runs:
            run = metrics.run
            assert run is not None and run.rolled_up and metrics.published
        reads = {m.run.trades_read for m in chunk.runs if m.run is not None}
        assert len(reads) == 1
    # the rolled-up candles were compared with candles recomputed from the trades, window by
    # window (every window here), and published only then
    checked = sum(
        m.expectations_evaluated for chunk in done for m in chunk.runs if m.timeframe == "1d"
    )
    assert checked > 0
    # and the last chunk recorded the pinned snapshot as every table's watermark
    for tf in ALL:
        assert snapshots.watermark(spark, tables.candles(tf)) == pinned


def test_backfill_all_in_local_calendars_equals_the_oracle(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    rng = random.Random(31)
    # Given: a NYSE-session stock and an NSE stock (+05:30) over the US spring-forward weekend
    days = [date(2026, 3, 6) + timedelta(days=i) for i in range(4)]
    trades = []
    ids = iter(rng.sample(range(1, 10**6), 4000))
    for exchange, symbol in LOCAL:
        for day in days:
            for _ in range(400):
                ts = START.replace(year=day.year, month=day.month, day=day.day) + timedelta(
                    microseconds=rng.randrange(86_400_000_000)
                )
                trades.append(
                    Trade(
                        exchange,
                        symbol,
                        next(ids),
                        Decimal(rng.randrange(1, 10**8)) / Decimal(10**4),
                        Decimal(rng.randrange(1, 10**9)) / Decimal(10**8),
                        "buy",
                        ts,
                    )
                )
    first, last = min(t.ts for t in trades), max(t.ts for t in trades)
    deliver(catalog, tables, trades, now=last + timedelta(minutes=1))
    local = _every_window(run_settings).model_copy(update={"calendars": json.dumps(DECLARED)})

    # When: every timeframe is backfilled in two-day chunks from one pass over the trades
    done = list(
        run_backfill(
            local, ALL, first, last + timedelta(minutes=1), chunk=timedelta(days=2), spark=spark
        )
    )

    # Then: every field of every timeframe equals the oracle in local time
    assert len(done) > 1
    for tf in ALL:
        want = expected_local_candles(trades, tf.width, lambda e, s: LOCAL[(e, s)])
        problems = diff(want, stored_candles(spark, tables.candles(tf)))
        assert not problems, f"{tf}: {len(problems)} differences, first: {problems[:5]}"


class _Tampering(Steps):
    """Changes one candle of ``victim`` on the audit branch after the run wrote it, before
    validation."""

    def __init__(self, tables: Tables, victim: str) -> None:
        self.tables = tables
        self.victim = victim

    def generate(
        self, spark: SparkSession, settings: Settings, tf: Timeframe, request: RunRequest
    ) -> jobs.RunResult:
        run = super().generate(spark, settings, tf, request)
        if tf.name == self.victim:
            branch = f"{self.tables.candles(tf)}.branch_{wap.AUDIT_BRANCH}"
            spark.sql(
                "UPDATE IDENTIFIER(:t) SET volume = volume + 0.00000001 "
                "WHERE window_start = (SELECT max(window_start) FROM IDENTIFIER(:t))",
                args={"t": branch},
            ).collect()
        return run


@pytest.mark.parametrize("victim", ["1m", "1h"])
def test_a_candle_changed_on_the_audit_branch_after_the_write_is_caught(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    run_settings: Settings,
    victim: str,
) -> None:
    rng = random.Random(33)
    end = START + timedelta(hours=3)
    trades = random_trades(rng, START, end, 600, first_id=1)
    deliver(catalog, tables, trades, now=end)
    settings = _every_window(run_settings)
    timeframes = [TIMEFRAMES["1m"], TIMEFRAMES["1h"]]
    backfill = run_backfill(settings, timeframes, START, end, spark=spark)
    request = backfill.requests[backfill.chunks[0]]
    tampered = TIMEFRAMES[victim]

    # When: a chunk of 1m and 1h (one aggregate) runs and, between the write and the
    # validation, one candle's volume on the audit branch changes by one unit (every
    # invariant still holds)
    with pytest.raises(ValidationFailed) as failed:
        run_chunk_pipelines(spark, settings, timeframes, request, _Tampering(tables, victim))
    # Then: the candles recomputed from the trades disagree, and main stays as it was
    assert failed.value.report.checkpoint.endswith(f"{victim}_trades_sample")
    assert "volume" in str(failed.value)
    assert snapshots.main_snapshot_id(spark, tables.candles(tampered)) is None
    # Without tampering the same chunk publishes (the 1m candles of the 1h case were already
    # published, untouched), and both tables equal the oracle
    results = run_chunk_pipelines(spark, settings, timeframes, request, pipeline.Steps())
    assert all(r.main_snapshot_id is not None for r in results)
    assert next(r for r in results if r.timeframe == victim).published
    assert_matches_oracle(spark, tables, trades, timeframes)


def test_cli_backfill_all_runs_each_chunk_as_one_flow_run(
    spark: SparkSession, catalog: Catalog, tables: Tables, flow_env: Settings
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    rng = random.Random(34)
    end = START + timedelta(hours=3)
    trades = random_trades(rng, START, end, 400, first_id=1)
    deliver(catalog, tables, trades, now=end)
    args = ["backfill", "all", "--start", START.isoformat(), "--end", end.isoformat()]

    # When: `ohlcv backfill all` runs (one chunk: a flow run of the backfill flow)
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})

    # Then: a line per timeframe, and every table equals the oracle
    assert result.exit_code == 0, result.output
    for tf in ALL:
        assert f" {tf.name}: " in result.output, result.output
    assert_matches_oracle(spark, tables, trades, ALL)
    # and a timeframe that does not exist is a usage error naming the choices
    refused = CliRunner().invoke(
        app, ["backfill", "2m", "--start", START.isoformat(), "--end", end.isoformat()]
    )
    assert refused.exit_code == 2 and "or all" in refused.output, refused.output
