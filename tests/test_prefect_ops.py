"""Operating the Prefect way: prefect.yaml against the code, `ohlcv deploy` and a process
worker, `ohlcv serve` stopping, alerts as automations, Prefect's history pruned.

All but the first test share one real local Prefect server (``infra.prefect_server``, as
`ohlcv stack up` starts it, with its services: triggers, actions, repossessor); the flows run on
the suite's Spark Connect server.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables
from core.timeframes import TIMEFRAMES
from flows.deployments import POOL, PREFECT_YAML, ROOT, deployments
from infra import prefect_server as local_prefect
from settings import Settings
from tests.support.environment import export_settings
from tests.support.ports import port
from tests.support.prefect import prefect_api
from tests.support.trades import assert_matches_oracle, deliver, random_trades

PREFECT_PORT = port(14220)
WEBHOOK_PORT = port(14221)
ONE_MINUTE = TIMEFRAMES["1m"]


def _declared(d: Any) -> dict[str, Any]:
    """What a deployment is, in prefect.yaml's terms."""
    return {
        "entrypoint": d.entrypoint,
        "description": d.description,
        "schedules": [
            {"cron": s.schedule.cron, "timezone": s.schedule.timezone} for s in d.schedules
        ],
        "tags": list(d.tags),
        "parameters": dict(d.parameters),
        "concurrency_limit": {
            "limit": d.concurrency_limit,
            "collision_strategy": d.concurrency_options.collision_strategy.value,
        },
        "work_pool": {"name": POOL},
    }


def test_prefect_yaml_declares_exactly_what_serve_serves() -> None:
    # Given: prefect.yaml and the deployments `ohlcv serve` builds from core/timeframes.py
    declared = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    in_yaml = {d.pop("name"): d for d in declared}
    in_code = {d.name: _declared(d) for d in deployments()}
    # Then: the same deployments, each with the same entrypoint, UTC crons, tags, parameters,
    # concurrency and pool (a schedule changed in core/timeframes.py alone fails here)
    assert sorted(in_yaml) == sorted(in_code)
    for name, want in in_code.items():
        assert in_yaml[name] == want, name
    # And: every candle cron is the one of its timeframe
    for tf in TIMEFRAMES.values():
        assert in_yaml[f"ohlcv-{tf.name}"]["schedules"] == [{"cron": tf.cron, "timezone": "UTC"}]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local Prefect server `ohlcv stack up` starts (its own data directory and port)."""
    own = Settings(data_dir=tmp_path_factory.mktemp("prefect-ops"), prefect_port=PREFECT_PORT)
    local_prefect.up(own)
    try:
        yield local_prefect.local_url(own)
    finally:
        local_prefect.down(own)


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": url, **extra}
    env.pop("PREFECT_LOGGING_SETTINGS_PATH", None)
    return env


def _ohlcv(url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        cwd=ROOT,
        env=_env(url),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _prefect(url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=ROOT,
        env=_env(url, COLUMNS="250"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _recent_trades(catalog: Catalog, tables: Tables, seed: int, first_id: int) -> list[Any]:
    now = datetime.now(UTC)
    trades = random_trades(random.Random(seed), now - timedelta(minutes=8), now, 300, first_id)
    deliver(catalog, tables, trades, now=now)
    return trades


def test_deploy_then_a_worker_runs_the_plans_own_command(
    prefect_server: str,
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    run_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Given: trades of the last minutes, and the stack's settings in the environment
    export_settings(monkeypatch, run_settings)
    trades = _recent_trades(catalog, tables, 29, 1)
    # When: `ohlcv deploy` (pool created, every prefect.yaml entry deployed), then a worker
    deployed = _ohlcv(prefect_server, "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "deployed ohlcv-1m to work pool 'ohlcv'" in deployed.stdout
    with prefect_api(prefect_server):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            found = {d.name: d for d in client.read_deployments()}
    assert sorted(found) == sorted(d.name for d in deployments())
    one = found["ohlcv-1m"]
    assert one.work_pool_name == POOL and one.concurrency_limit == 1
    assert [s.schedule.cron for s in one.schedules] == [ONE_MINUTE.cron]  # type: ignore[union-attr]
    assert one.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
        cwd=tmp_path,
        env=_env(prefect_server, PREFECT_WORKER_QUERY_SECONDS="2"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # And: the plan's own command, watched to its end
        ran = _prefect(
            prefect_server, "deployment", "run", "OHLCV 1-Minute Pipeline/ohlcv-1m", "--watch",
            timeout=400,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr + (tmp_path / "worker.log").read_text()
        assert "Completed" in ran.stdout
        # Then: the candles are published, equal to the oracle, and `flow-run ls` shows the run
        assert_matches_oracle(spark, tables, trades, [ONE_MINUTE])
        listed = _prefect(prefect_server, "flow-run", "ls")
        assert listed.returncode == 0, listed.stderr
        assert "OHLCV 1-Minute Pipeline" in listed.stdout and "COMPLETED" in listed.stdout
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        log.close()


def test_serve_stops_within_seconds_with_the_prefect_server_down(
    settings: Settings, server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given: `ohlcv serve` on a Prefect server of its own, its schedules registered
    export_settings(monkeypatch, settings)
    own = Settings(data_dir=tmp_path, prefect_port=port(14222))
    local_prefect.up(own)
    url = local_prefect.local_url(own)
    out = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-c", "from cli.main import main; main()", "serve"],
        cwd=ROOT,
        env=_env(url),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with prefect_api(url):
            from prefect.client.orchestration import get_client

            deadline = time.monotonic() + 180
            with get_client(sync_client=True) as client:
                while len(client.read_deployments()) < len(deployments()):
                    assert serve.poll() is None, (tmp_path / "serve.log").read_text()
                    assert time.monotonic() < deadline, "serve did not register its deployments"
                    time.sleep(1)
        # When: the Prefect server goes away, then serve gets SIGTERM
        local_prefect.down(own)
        time.sleep(3)
        started = time.monotonic()
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(30)
        took = time.monotonic() - started
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        out.close()
    console = (tmp_path / "serve.log").read_text()
    # Then: it ended within seconds, with no traceback on its console
    assert took < 12, (took, console)
    assert "Traceback" not in console, console
    # And: its schedules are still active (serve does not pause them on the way out)
    local_prefect.up(own)
    try:
        with prefect_api(url), get_client(sync_client=True) as client:
            for deployment in client.read_deployments():
                assert not deployment.paused, deployment.name
                assert all(s.active for s in deployment.schedules), deployment.name
    finally:
        local_prefect.down(own)
