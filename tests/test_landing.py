"""The landing zone end to end: every format to candles equal to the oracle, kill -9 of a real
`ohlcv ingest` pass at each point, a landing prefix on the local S3 server, the deployment.

Fixture files are written here as Binance and Tardis.dev publish them (tests/support/feeds.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import LANDING_FILES, TRADES, TRADES_REJECTED, Tables
from core.timeframes import TIMEFRAMES
from flows.trades_ingest import (
    CRON,
    DEPLOYMENT_NAME,
    FLOW_NAME,
    ingest_deployment,
    landing_pass,
    ohlcv_trades_ingest_flow,
)
from infra import object_store
from ingest.ledger import INGESTED
from settings import LOCAL_S3_BUCKET, Settings, StorageType
from spark_jobs import jobs
from spark_jobs.maintenance import MaintenancePolicy, maintain, maintain_table
from tests.support.feeds import tardis_lines, write_binance_zip, write_tardis_gz
from tests.support.oracle import Trade
from tests.support.ports import port
from tests.support.trades import assert_matches_oracle
from tests.test_feeds import FEB, stored_key, stored_trades, trades_of

ROOT = Path(__file__).resolve().parents[1]
NO_PREFECT = str(port(15996))  # nothing listens there: a pass takes no writer slot


def landing_files(where: Path) -> list[Trade]:
    """One file of each format (Binance in us and in ms), written to ``where``; their trades."""
    spot_us = trades_of("binance", "BTCUSDT", 40, FEB, 9_000_000_000)
    spot_ms = trades_of("binance", "ETHUSDT", 30, FEB - timedelta(days=1), 1, step_us=1000)
    agg = trades_of("binance", "SOLUSDT", 30, FEB, 500)
    futures = trades_of("binance-futures", "BTCUSDT", 30, FEB, 77, step_us=1000)
    tardis = trades_of("bybit", "ETHUSDT", 30, FEB, 4000)
    write_binance_zip(where / "BTCUSDT-trades-2026-02-01.zip", spot_us)
    write_binance_zip(where / "ETHUSDT-trades-2026-01-31.zip", spot_ms, unit="ms")
    write_binance_zip(where / "SOLUSDT-aggTrades-2026-02-01.zip", agg, "aggTrades")
    write_binance_zip(where / "BTCUSDT-trades-2026-02.zip", futures, "futures", "ms")
    write_tardis_gz(where / "bybit_trades_2026-02-01_ETHUSDT.csv.gz", tardis_lines(tardis))
    return spot_us + spot_ms + agg + futures + tardis


def test_every_format_through_a_pass_gives_the_oracle_candles(
    spark: SparkSession, tables: Tables, run_settings: Settings, tmp_path: Path
) -> None:
    # Given a landing zone with one file of each format
    trades = landing_files(tmp_path)
    # When one pass runs, and the candle jobs after it
    done = landing_pass(run_settings, str(tmp_path), lock=False)
    assert (len(done.ingested), done.failed, done.accepted) == (5, [], len(trades))
    now = FEB + timedelta(days=2)
    tfs = [TIMEFRAMES["1m"], TIMEFRAMES["1d"]]
    for tf in tfs:
        jobs.refresh_candles(spark, tables, tf, now=now, lookback=timedelta(days=3))
    # Then every candle equals the oracle's, and a second pass ingests nothing
    assert_matches_oracle(spark, tables, trades, tfs)
    again = landing_pass(run_settings, str(tmp_path), lock=False)
    assert (again.ingested, again.failed, again.accepted) == ([], [], 0)


def test_the_ledger_of_a_pass_a_minute_stays_bounded(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings, tmp_path: Path
) -> None:
    # Given passes that each find one new file, and passes that find none
    for day in range(4):
        trades = trades_of("binance", "BTCUSDT", 5, FEB + timedelta(days=day), 100 * day + 1)
        write_binance_zip(tmp_path / f"BTCUSDT-trades-2026-02-0{day + 1}.zip", trades)
        assert len(landing_pass(run_settings, str(tmp_path), lock=False).ingested) == 1
    ledger = catalog.load_table((tables.namespace, LANDING_FILES))
    metadata = Path(ledger.metadata_location.removeprefix("file:")).parent
    written = sorted(metadata.iterdir())
    for _ in range(3):
        assert landing_pass(run_settings, str(tmp_path), lock=False).ingested == []
    # Then a pass that finds nothing writes no file of the ledger's (not even metadata)
    assert sorted(metadata.iterdir()) == written
    # When maintenance runs (the daily flow maintains the ledger once it exists)
    eager = MaintenancePolicy(snapshot_age=timedelta(0), retain_last=1)
    done = maintain(spark, tables, [TRADES_REJECTED, LANDING_FILES], eager, datetime.now(UTC))
    # Then the ledger keeps one data file, every row, and its meaning
    ledger_done = {d.table: d for d in done}[LANDING_FILES]
    assert (ledger_done.before.snapshots, ledger_done.before.data_files) == (4, 4)
    # (the one kept, and the compaction's, which the next maintenance expires)
    assert (ledger_done.after.snapshots, ledger_done.after.data_files) == (2, 1)
    rows = catalog.load_table((tables.namespace, LANDING_FILES)).scan().to_arrow()
    assert rows.column("status").to_pylist() == [INGESTED] * 4
    assert landing_pass(run_settings, str(tmp_path), lock=False).ingested == []
    again = maintain(spark, tables, [LANDING_FILES], eager, datetime.now(UTC))[0]
    assert (again.after.snapshots, again.after.data_files, again.files_compacted) == (1, 1, 0)


def _ingest_env(settings: Settings, **more: str) -> dict[str, str]:
    """The environment of an `ohlcv ingest` of the test's tables, with no Prefect server."""
    return {
        **os.environ,
        "OHLCV_DATA_DIR": str(settings.data_dir),
        "OHLCV_NAMESPACE": settings.namespace,
        "OHLCV_PREFECT_PORT": NO_PREFECT,
        "PYTHONUNBUFFERED": "1",
        **more,
    }


INGEST = [sys.executable, "-c", "from cli.main import app; app()", "ingest"]


def _pass_killed_at(settings: Settings, where: Path, point: str) -> None:
    """Run `ohlcv ingest WHERE` in a process of its own and kill -9 it at ``point``; while
    it is paused there, a second `ohlcv ingest WHERE` waits for its lock and gives up."""
    env = _ingest_env(settings, OHLCV_TEST_PAUSE_AT=point)
    with subprocess.Popen(
        [*INGEST, str(where)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as child:
        assert child.stdout is not None
        seen = []
        for line in child.stdout:
            seen.append(line)
            if f"paused at {point}" in line:
                if point == "before-append":
                    _second_pass_gives_up(settings, where)
                child.send_signal(signal.SIGKILL)
                break
        assert child.wait(timeout=60) == -signal.SIGKILL, "".join(seen)


def _second_pass_gives_up(settings: Settings, where: Path) -> None:
    """With no Prefect server, two passes on one machine never write side by side."""
    second = subprocess.run(
        [*INGEST, str(where)],
        cwd=ROOT,
        env=_ingest_env(settings, OHLCV_WRITER_WAIT_S="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = second.stdout + second.stderr
    assert second.returncode == 1, said
    assert "another command of this machine has held trades" in said, said
    assert "Traceback" not in said, said


@pytest.mark.parametrize("point", ["mid-file", "before-append", "after-append", "before-ledger"])
def test_a_pass_killed_at_any_point_then_run_again_gives_every_trade_once(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    run_settings: Settings,
    tmp_path: Path,
    point: str,
) -> None:
    # Given a landing zone, and a pass killed with -9 at `point`
    trades = landing_files(tmp_path)
    _pass_killed_at(run_settings, tmp_path, point)
    if point == "before-ledger":
        # (its trades are committed, the ledger is not; maintenance then expires the snapshot
        # whose summary named the files)
        policy = MaintenancePolicy(snapshot_age=timedelta(0), retain_last=1)
        maintain_table(spark, tables, TRADES, policy, datetime.now(UTC))
    # When a new pass runs
    done = landing_pass(run_settings, str(tmp_path), lock=False)
    # Then the trades are exactly those of an uninterrupted pass: each once
    assert not done.failed and len(done.ingested) == 5
    assert sorted(stored_trades(catalog, tables.namespace)) == sorted(map(stored_key, trades))
    ledger = catalog.load_table((tables.namespace, LANDING_FILES)).scan().to_arrow()
    assert sorted(ledger.column("status").to_pylist()) == [INGESTED] * 5
    assert landing_pass(run_settings, str(tmp_path), lock=False).ingested == []


@pytest.mark.stack
def test_a_landing_prefix_on_the_local_s3_server(
    catalog: Catalog, run_settings: Settings, tmp_path: Path
) -> None:
    s3 = Settings(
        data_dir=tmp_path / "s3", storage=StorageType.S3, s3_port=port(15021), spark_remote=None
    )
    object_store.up(s3)
    try:
        # Given the files under a prefix of the local S3 server
        files = tmp_path / "files"
        files.mkdir()
        trades = landing_files(files)
        fs = object_store.filesystem(s3)
        for path in sorted(files.iterdir()):
            key = f"{LOCAL_S3_BUCKET}/landing/2026/{path.name}"
            with fs.open_output_stream(key, compression=None) as out:  # (.gz: as it is)
                out.write(path.read_bytes())
        key, secret = object_store.ensure_credentials(s3)
        reader = run_settings.model_copy(
            update={
                "s3_endpoint": object_store.url(s3),
                "s3_access_key_id": key,
                "s3_secret_access_key": SecretStr(secret),
            }
        )
        prefix = f"s3://{LOCAL_S3_BUCKET}/landing"
        # When passes run over the prefix
        done = landing_pass(reader, prefix, lock=False)
        again = landing_pass(reader, prefix, lock=False)
    finally:
        object_store.down(s3)
    # Then each file went in once, named by its s3:// path
    assert not done.failed, [r.reason for r in done.failed]
    assert sorted(r.identity.path for r in done.ingested) == sorted(
        f"{prefix}/2026/{p.name}" for p in files.iterdir()
    )
    assert again.ingested == [] and again.accepted == 0
    assert sorted(stored_trades(catalog, run_settings.namespace)) == sorted(map(stored_key, trades))


def test_the_deployment_runs_a_pass_every_minute(
    flow_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment: Any = ingest_deployment()
    assert deployment.name == DEPLOYMENT_NAME and deployment.concurrency_limit == 1
    assert [s.schedule.cron for s in deployment.schedules] == [CRON] == ["* * * * *"]
    assert set(deployment.tags) == {"ohlcv", "ingest"}
    assert ohlcv_trades_ingest_flow.name == FLOW_NAME == "OHLCV Trades Ingest"
    write_binance_zip(
        tmp_path / "BTCUSDT-trades-2026-02-01.zip", trades_of("binance", "BTCUSDT", 5, FEB, 1)
    )
    monkeypatch.setenv("OHLCV_LANDING", str(tmp_path))
    result = ohlcv_trades_ingest_flow()
    assert result is not None and len(result.ingested) == 1 and result.accepted == 5
