"""The same flows on a real standalone cluster: a master and two worker processes on loopback."""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest

from core.timeframes import TIMEFRAMES
from flows.backfill import run_backfill
from flows.candle_flows import FLOWS
from infra import spark_server
from tests.support.environment import export_settings
from tests.support.oracle import diff, expected_candles, stored_candles
from tests.support.stacks import Given, LocalStack
from tests.support.trades import START, deliver, random_trades


@pytest.fixture
def on_cluster(cluster: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Given:
    """Tables of this test's own on the cluster, the flows' own settings pointing at them."""
    given = cluster.given(gx_dir=tmp_path / "gx", prefix="c")
    export_settings(monkeypatch, given.settings)
    return given


def test_the_server_runs_on_two_worker_processes(cluster: LocalStack) -> None:
    pids = spark_server.cluster_pids(cluster.settings)
    assert len(pids["master"]) == 1 and len(pids["workers"]) == 2
    assert spark_server.alive_workers(cluster.settings) == 2


def test_the_five_flows_on_the_cluster_equal_the_oracle(prefect: None, on_cluster: Given) -> None:
    _, spark, catalog, tables = on_cluster
    now = START + timedelta(hours=2)
    trades = random_trades(random.Random(71), START, now, 700, first_id=1)
    deliver(catalog, tables, trades, now=now)
    for name in TIMEFRAMES:
        assert FLOWS[name](at=now).published
    for tf in TIMEFRAMES.values():
        problems = diff(expected_candles(trades, tf), stored_candles(spark, tables.candles(tf)))
        assert not problems, f"{tf}: {problems[:5]}"


def test_a_backfill_survives_losing_a_worker(
    on_cluster: Given,
) -> None:
    settings, spark, catalog, tables = on_cluster
    end = START + timedelta(hours=4)
    trades = random_trades(random.Random(72), START, end, 1200, first_id=1)
    deliver(catalog, tables, trades, now=end)
    tf = TIMEFRAMES["1m"]
    chunks = iter(run_backfill(settings, tf, START, end, chunk=timedelta(hours=1), spark=spark))

    first = next(chunks)
    assert first.metrics.published
    # When: one worker process (and its executors) is killed mid-backfill
    victim = spark_server.cluster_pids(settings)["workers"][0]
    os.killpg(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while spark_server.alive_workers(settings) != 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert spark_server.alive_workers(settings) == 1
    rest = list(chunks)
    # Then: every remaining chunk still completes on the surviving worker, exactly
    assert len(rest) == 3 and all(r.metrics.published for r in rest)
    assert not diff(expected_candles(trades, tf), stored_candles(spark, tables.candles(tf)))
