"""The same flows on a real standalone cluster: a master and two worker processes on loopback."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables, ensure_tables
from core.timeframes import TIMEFRAMES
from flows.backfill import run_backfill
from flows.candle_flows import FLOWS
from infra import spark_server, stack
from infra.catalog import open_catalog
from infra.session import close, connect
from settings import Settings
from tests.conftest import export_settings, port
from tests.helpers import START, deliver, random_trades
from tests.oracle import diff, expected_candles, stored_candles


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("cluster"),
        connect_port=port(15013),
        ui_port=port(14053),
        master_port=port(17077),
        master_ui_port=port(18080),
        workers=2,
        worker_memory="1g",
        driver_memory="2g",
        spark_remote=None,
    )
    stack.up(settings)
    yield settings
    stack.down(settings)


@pytest.fixture
def on_cluster(
    cluster: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, SparkSession, Catalog, Tables]]:
    namespace = f"c_{os.urandom(6).hex()}"
    settings = cluster.model_copy(update={"namespace": namespace, "gx_dir": tmp_path / "gx"})
    catalog = open_catalog(settings)
    ensure_tables(catalog, namespace)
    export_settings(monkeypatch, settings)
    spark = connect(settings)
    yield settings, spark, catalog, Tables(settings.catalog_name, namespace)
    close(spark)


def test_the_server_runs_on_two_worker_processes(cluster: Settings) -> None:
    pids = spark_server.cluster_pids(cluster)
    assert len(pids["master"]) == 1 and len(pids["workers"]) == 2
    assert spark_server.alive_workers(cluster) == 2


def test_the_five_flows_on_the_cluster_equal_the_oracle(
    prefect: None, on_cluster: tuple[Settings, SparkSession, Catalog, Tables]
) -> None:
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
    on_cluster: tuple[Settings, SparkSession, Catalog, Tables],
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
