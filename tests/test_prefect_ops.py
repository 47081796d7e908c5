"""Operating the Prefect way: prefect.yaml against the code, `ohlcv deploy` and a process
worker, `ohlcv serve` stopping, alerts as automations, Prefect's history pruned.

All but the first test share one real local Prefect server (``infra.prefect_server``, as
`ohlcv stack up` starts it, with its services: triggers, actions, repossessor); the flows run on
the suite's Spark Connect server.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, ClassVar

import pytest
import yaml
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables
from core.timeframes import TIMEFRAMES
from flows.deployments import JOB_VARIABLES, POOL, PREFECT_YAML, ROOT, deployments
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
        "work_pool": {"name": POOL, "job_variables": JOB_VARIABLES},
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


ZOMBIE_AFTER_S = 45
"""The test's OHLCV_ZOMBIE_AFTER_S (default 90): heartbeats come every 30 s."""


def test_deploy_then_a_worker_runs_the_plans_own_command_and_survives_kill_9(
    prefect_server: str,
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    run_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.objects import StateType
    from prefect.states import Pending

    # Given: trades of the last minutes, and the stack's settings in the environment
    export_settings(monkeypatch, run_settings, zombie_after_s=str(ZOMBIE_AFTER_S))
    trades = _recent_trades(catalog, tables, 29, 1)
    # When: `ohlcv deploy` (pool created, every prefect.yaml entry deployed), then a worker
    deployed = _ohlcv(prefect_server, "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "deployed ohlcv-1m to work pool 'ohlcv'" in deployed.stdout
    with prefect_api(prefect_server), get_client(sync_client=True) as client:
        found = {d.name: d for d in client.read_deployments()}
    assert sorted(found) == sorted(d.name for d in deployments())
    one = found["ohlcv-1m"]
    assert one.work_pool_name == POOL and one.job_variables == JOB_VARIABLES
    assert one.global_concurrency_limit is not None and one.global_concurrency_limit.limit == 1
    assert [s.schedule.cron for s in one.schedules] == [ONE_MINUTE.cron]  # type: ignore[union-attr]
    assert one.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]
    with prefect_api(prefect_server), get_client(sync_client=True) as client:
        # Only the runs the test starts: scheduled ones would load the machine, and a due
        # scheduled run makes an earlier one skip itself (it covers it)
        for deployment in found.values():
            for schedule in deployment.schedules:
                client.delete_deployment_schedule(deployment.id, schedule.id)
        for run in client.read_flow_runs():
            client.delete_flow_run(run.id)
    worker = _worker(prefect_server, tmp_path / "worker.log")
    try:
        # And: the plan's own command, watched to its end
        ran = _prefect(prefect_server, "deployment", "run", DEPLOYMENT, "--watch", timeout=400)
        assert ran.returncode == 0, ran.stdout + ran.stderr + (tmp_path / "worker.log").read_text()
        assert "Completed" in ran.stdout
        # Then: the candles are published, equal to the oracle, and `flow-run ls` shows the run
        assert_matches_oracle(spark, tables, trades, [ONE_MINUTE])
        listed = _prefect(prefect_server, "flow-run", "ls")
        assert listed.returncode == 0, listed.stderr
        with prefect_api(prefect_server), get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[one.id]))
            )
        done = [r.name for r in runs if r.state_type == StateType.COMPLETED]
        assert done and all(name in listed.stdout for name in done), listed.stdout

        # When: the worker and its run's process are killed with -9 in the middle of a run
        trades += _recent_trades(catalog, tables, 30, 10_000)
        with prefect_api(prefect_server), get_client(sync_client=True) as client:
            killed = client.create_flow_run_from_deployment(one.id)
            _wait_for_state(client, killed.id, StateType.RUNNING, 300)
        time.sleep(3)  # inside the run: its writer slot taken, its Spark work started
        _kill_9_with_children(worker)
        killed_at = time.monotonic()
        # (and a run of another deployment the dead worker had taken, but not started yet)
        with prefect_api(prefect_server), get_client(sync_client=True) as client:
            taken = client.create_flow_run_from_deployment(found["ohlcv-5m"].id)
            proposed: Any = client.set_flow_run_state(taken.id, Pending()).state
            assert proposed is not None and proposed.is_pending()
            assert _active_slots(client, "ohlcv-5m") == 1
        worker = _worker(prefect_server, tmp_path / "worker2.log")
        # Then: the next run of the deployment completes (the dead run is crashed by the
        # zombie automation, freeing the deployment's slot; its writer lease, 60 s, runs out)
        ran = _prefect(prefect_server, "deployment", "run", DEPLOYMENT, "--watch", timeout=400)
        waited = time.monotonic() - killed_at
        assert ran.returncode == 0 and "Completed" in ran.stdout, ran.stdout + ran.stderr
        with prefect_api(prefect_server), get_client(sync_client=True) as client:
            assert client.read_flow_run(killed.id).state_type == StateType.CRASHED
            # and the taken run is crashed too, its deployment's slot free again
            _wait_for_state(client, taken.id, StateType.CRASHED, 60)
            assert _active_slots(client, "ohlcv-5m") == 0
        assert_matches_oracle(spark, tables, trades, [ONE_MINUTE])
        # (bounded: without the automation the slot stays taken for Prefect's 300 s lease)
        assert waited < 240, waited
    finally:
        _kill_9_with_children(worker)


DEPLOYMENT = "OHLCV 1-Minute Pipeline/ohlcv-1m"


def _worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    """`prefect worker start --pool ohlcv`, polling every 2 s."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
            cwd=log.parent,
            env=_env(url, PREFECT_WORKER_QUERY_SECONDS="2"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found + [g for c in found for g in _children(c)]


def _kill_9_with_children(process: subprocess.Popen[bytes]) -> None:
    """A lost machine: the process and every process it started, at once."""
    for victim in _children(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    process.kill()
    process.wait(30)


def _active_slots(client: Any, deployment: str) -> int:
    """Slots taken of a deployment's concurrency limit."""
    found = {d.name: d for d in client.read_deployments()}[deployment]
    return int(found.global_concurrency_limit.active_slots)


def _wait_for_state(client: Any, run_id: Any, state: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (now := client.read_flow_run(run_id).state_type) != state:
        assert time.monotonic() < deadline, f"flow run {run_id} still {now}"
        time.sleep(0.5)


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


class _Webhook(BaseHTTPRequestHandler):
    received: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body)["text"])
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[str]]]:
    """A Slack-compatible incoming webhook on 127.0.0.1: its URL and the texts it received."""
    _Webhook.received = []
    httpd = HTTPServer(("127.0.0.1", WEBHOOK_PORT), _Webhook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{WEBHOOK_PORT}/hook", _Webhook.received
    finally:
        httpd.shutdown()
        httpd.server_close()


STALE_S = 30
"""The test's window for "no 1m publication" (Prefect evaluates proactive triggers every 5 s,
PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY)."""


def test_alerts_arrive_once_each_and_applying_twice_creates_nothing(
    prefect_server: str,
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    run_settings: Settings,
    webhook: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.client.orchestration import get_client

    from expectations.validation import ValidationFailed
    from flows import pipeline
    from flows.automations import PREFIX
    from flows.candle_flows import FLOWS
    from spark_jobs import jobs, wap
    from tests.support.trades import START

    url, received = webhook
    export_settings(
        monkeypatch,
        run_settings,
        alert_webhook=url,
        alert_stale_1m_s=str(STALE_S),
        alert_gap_share="1",  # no gap alert for the first run
        generate_retry_delay_s="0",
        validate_retry_delay_s="0",
    )
    # When: the alerts are applied twice
    first = _ohlcv(prefect_server, "alerts", "apply")
    again = _ohlcv(prefect_server, "alerts", "apply")
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    # Then: four automations, created once, then left as they are (nothing new)
    # (the two that crash dead runs exist already if the deploy test ran: their window
    # changes here)
    assert first.stdout.count(": created") >= 4, first.stdout
    assert first.stdout.count("automation '") == 6, first.stdout
    assert again.stdout.count(": unchanged") == 6, again.stdout
    with prefect_api(prefect_server):
        with get_client(sync_client=True) as client:
            ours = [a for a in client.read_automations() if a.name.startswith(PREFIX)]
            blocks = client.read_block_documents()
        assert len(ours) == 6 and len([b for b in blocks if b.name == "ohlcv-alert-webhook"]) == 1

        # Given: sparse trades (many minutes without any), and a generate step that corrupts a
        # candle it wrote
        at = START + timedelta(minutes=30)
        trades = random_trades(random.Random(7), START, at, 40, first_id=1)
        deliver(catalog, tables, trades, now=at)
        table = tables.candles(ONE_MINUTE)
        generate = pipeline.generate

        def corrupting(*args: Any, **kwargs: Any) -> jobs.RunResult:
            run = generate(*args, **kwargs)
            spark.sql(f"UPDATE {table}.branch_{wap.AUDIT_BRANCH} SET low = high + 1")
            return run

        # When: a run fails its validation
        monkeypatch.setattr(pipeline, "generate", corrupting)
        run_1m: Any = FLOWS["1m"]  # (called with return_state: Prefect's State)
        failed_state = run_1m(at=at, return_state=True)
        assert isinstance(failed_state.result(raise_on_failure=False), ValidationFailed)
        failed_run = str(failed_state.state_details.flow_run_id)
        # and the next run publishes, with a gap report over its (now zero) threshold
        monkeypatch.setattr(pipeline, "generate", generate)
        monkeypatch.setenv("OHLCV_ALERT_GAP_SHARE", "0")
        good_state = run_1m(at=at, return_state=True)
        assert good_state.result().published
        good_run = str(good_state.state_details.flow_run_id)
        published_at = time.monotonic()
        with get_client(sync_client=True) as client:
            failed_name = client.read_flow_run(failed_state.state_details.flow_run_id).name
    # Then: four alerts, the last one STALE_S after the publication (nothing published since)
    deadline = published_at + STALE_S + 60
    while len(received) < 4 and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(10)  # anything sent twice would arrive by now
    by_subject = {text.split("\n")[0]: text for text in received}
    assert len(received) == 4 == len(by_subject), received
    failed = by_subject[f"OHLCV: OHLCV 1-Minute Pipeline run {failed_name} Failed"]
    assert f"/runs/flow-run/{failed_run}" in failed and "prefect flow-run logs" in failed
    blocked = by_subject[f"OHLCV: validation blocked {ONE_MINUTE.table}"]
    assert f"/runs/flow-run/{failed_run}" in blocked
    assert "rejected-" in blocked and "high >= low" in blocked.replace("(", "").replace(")", "")
    gaps = by_subject[f"OHLCV: gaps in {ONE_MINUTE.table}"]
    assert f"/runs/flow-run/{good_run}" in gaps and "windows without trades" in gaps
    stale = by_subject["OHLCV: no 1m publication"]
    assert f"for {STALE_S} s" in stale and "/runs" in stale
    assert time.monotonic() - published_at >= STALE_S


def test_maintenance_prunes_old_flow_runs_with_their_task_runs_logs_and_artifacts_in_batches(
    prefect_server: str,
) -> None:
    from prefect import flow, get_run_logger, task
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterEndTime,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
    )

    from flows.prefect_history import prune_flow_runs

    @task
    def step() -> int:
        get_run_logger().info("a log line")
        create_markdown_artifact("# an artifact", key="history-test")
        return 1

    @flow(name="history test")
    def cheap() -> int:
        return step()

    with prefect_api(prefect_server):
        # Given: 12 finished flow runs, each with a task run, logs and an artifact
        for _ in range(12):
            cheap()
        cutoff = datetime.now(UTC)
        old = FlowRunFilter(end_time=FlowRunFilterEndTime(before_=cutoff))  # type: ignore[arg-type]
        with get_client(sync_client=True) as client:
            ids = [r.id for r in client.read_flow_runs(flow_run_filter=old)]
            assert len(ids) >= 12
            # When: pruned with a batch of 5 (the retention: everything before the cutoff)
            pruned = prune_flow_runs(timedelta(0), batch=5, now=cutoff)
            # Then: 5 deleted, the rest left for the next call, which continues
            assert (pruned.flow_runs, pruned.more) == (5, True)
            assert len(client.read_flow_runs(flow_run_filter=old)) == len(ids) - 5
            while prune_flow_runs(timedelta(0), batch=5, now=cutoff).more:
                pass
            # And: nothing that ended before the cutoff remains, nor its task runs, artifacts
            # and (deleted by the server in the background) logs
            assert client.read_flow_runs(flow_run_filter=old) == []
            runs = FlowRunFilter(id={"any_": ids})  # type: ignore[arg-type]
            left = client.read_task_runs(flow_run_filter=runs, task_run_filter=TaskRunFilter())
            assert left == []
            assert (
                client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
                )
                == []
            )
            deadline = time.monotonic() + 30
            while client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))):
                assert time.monotonic() < deadline, "the runs' logs were not deleted"
                time.sleep(1)
            # And: a run that ended after the cutoff is kept
            cheap()
            assert prune_flow_runs(timedelta(0), batch=5, now=cutoff).flow_runs == 0
