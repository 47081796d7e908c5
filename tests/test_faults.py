"""Faults without loss or hangs: crashed writers, and what the next run makes of them."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from prefect.states import State
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables, ensure_tables
from core.timeframes import TIMEFRAMES, Timeframe
from flows import pipeline
from flows.candle_flows import FLOWS
from flows.pipeline import RunRequest, tables_for
from infra import stack
from infra.catalog import open_catalog
from infra.session import close, connect
from settings import Settings
from spark_jobs import jobs, snapshots, wap
from tests.conftest import export_settings
from tests.helpers import START, assert_matches_oracle, deliver, random_trades
from tests.oracle import diff, expected_candles, stored_candles

ONE_MINUTE = TIMEFRAMES["1m"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLDER = """
import sys, time
from settings import Settings
from flows.writers import one_writer
with one_writer(Settings(), sys.argv[1]):
    print("holding", flush=True)
    time.sleep(600)
"""


PREFECT_PORT = 14210


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server with its services (the test harness's ephemeral server runs none,
    so it never takes back the slot of a dead lease holder). Yields its API URL."""
    home = tmp_path_factory.mktemp("prefect")
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        # Look for expired leases every second instead of every 15.
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
    }
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("wb")
    command = ["server", "start", "--host", "127.0.0.1", "--port", str(PREFECT_PORT), "--no-ui"]
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", *command],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{PREFECT_PORT}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (home / "server.log").read_text()
                assert time.monotonic() < deadline, "the Prefect server did not start"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()


def test_a_writer_killed_while_holding_its_table_does_not_block_it_for_good(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    run_settings: Settings,
    prefect_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    rng = random.Random(81)
    now = START + timedelta(minutes=30)
    trades = random_trades(rng, START, now, 200, first_id=1)
    deliver(catalog, tables, trades, now=now)
    export_settings(monkeypatch, run_settings)
    # Given: another process holds the 1m table's writer slot and is killed with -9
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, ONE_MINUTE.table],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": prefect_server},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        # The dead process's slot is still taken: an impatient run is refused ...
        monkeypatch.setenv("OHLCV_WRITER_WAIT_S", "1")
        refused = cast(State[Any], FLOWS["1m"](at=now, return_state=True))
        message = str(refused.result(raise_on_failure=False))
        assert refused.is_failed() and "another writer" in message
        # When: the next run of the table comes, willing to wait
        monkeypatch.setenv("OHLCV_WRITER_WAIT_S", "180")
        started = time.monotonic()
        metrics = FLOWS["1m"](at=now)
        waited = time.monotonic() - started
    # Then: it got the table once the dead writer's lease ran out, and published
    assert metrics.published
    assert waited < run_settings.writer_lease_s + 60, waited
    assert_matches_oracle(spark, tables, trades, [ONE_MINUTE])


class _LongWrite(pipeline.Steps):
    """A generate step whose write takes minutes (it would commit if nothing stopped it)."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def generate(
        self, spark: SparkSession, settings: Settings, tf: Timeframe, request: RunRequest
    ) -> jobs.RunResult:
        table = tables_for(settings).candles(tf)
        wap.start_audit(spark, table)
        self.started.set()
        spark.sql(
            f"INSERT INTO {table}.branch_{wap.AUDIT_BRANCH} SELECT t.* FROM {table} t "
            "CROSS JOIN (SELECT max(id) AS m FROM range(200000000000)) WHERE m >= 0"
        )
        raise AssertionError("the long write finished although its server was killed")


@pytest.mark.spark  # starts a server of its own, to kill it
def test_killing_the_server_mid_run_fails_the_run_promptly_and_a_rerun_recovers(
    tmp_path: Path,
) -> None:
    own = Settings(
        data_dir=tmp_path,
        connect_port=15015,
        ui_port=14055,
        spark_remote=None,
        driver_memory="1g",
        connect_retry_s=5,
        gx_dir=tmp_path / "gx",
    )
    stack.up(own)
    try:
        catalog = open_catalog(own)
        ensure_tables(catalog, own.namespace)
        tables = tables_for(own)
        now = START + timedelta(minutes=30)
        trades = random_trades(random.Random(82), START, now, 200, first_id=1)
        deliver(catalog, tables, trades, now=now)
        spark = connect(own)
        pipeline.run_pipeline(spark, own, ONE_MINUTE, RunRequest(now=now))  # a first publish
        before = snapshots.main_snapshot_id(spark, tables.candles(ONE_MINUTE))
        # Given: a run in the middle of a long write
        steps, failure = _LongWrite(), dict[str, Any]()

        def run() -> None:
            try:
                pipeline.run_pipeline(spark, own, ONE_MINUTE, RunRequest(now=now), steps)
            except Exception as e:  # what the caller (a task, the CLI) gets
                failure["error"], failure["at"] = e, time.monotonic()

        worker = threading.Thread(target=run)
        worker.start()
        assert steps.started.wait(120)
        time.sleep(2)
        # When: the server is killed with -9
        pid = stack.status(own).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.join(120)
        # Then: the run fails within the retry budget, not after minutes of retries
        assert not worker.is_alive() and "error" in failure
        assert failure["at"] - killed < own.connect_retry_s + 30, failure["at"] - killed
        with contextlib.suppress(Exception):
            close(spark)

        # When: the server is back and the next run comes
        stack.up(own)
        spark = connect(own)
        result = pipeline.run_pipeline(spark, own, ONE_MINUTE, RunRequest(now=now))
        # Then: main is where the killed run found it, the audit branch is usable again, and
        # the candles equal the oracle with no duplicate
        table = tables.candles(ONE_MINUTE)
        assert snapshots.main_snapshot_id(spark, table) == before == result.main_after
        assert not diff(expected_candles(trades, ONE_MINUTE), stored_candles(spark, table))
        close(spark)
    finally:
        stack.down(own)
