"""Scheduled-run overhead: 1m flow runs under `ohlcv serve`, from Prefect's start to the end.

Not a test: it prints numbers. It starts its own local stack (Spark Connect and Prefect servers,
own data directory and ports), ingests an hour of trades and publishes it, then starts
`ohlcv serve` exactly as a user does and, N times: ingests the last minute's trades (20 symbols,
60 trades a minute each) and runs the 1m deployment (`run_deployment`, default parameters: the
10-minute lookback at the wall clock), waiting for it to finish. The other deployments are
paused so only 1m runs. Per run it reads back from Prefect the flow run's start and end and
the step times the run's metrics artifact records, and prints the medians of the split:

- Spark: the generate step (recompute the windows, diff, MERGE into the audit branch);
- GX: the validate step (the suites on the written windows, results stored, data docs);
- WAP: the publish step (fast-forward main, revisions);
- Prefect and the session: the rest of the flow run (engine, task runs, the superseded
  check, the writer's lease, opening and closing the Connect session, the artifact);

and the CPU seconds the run cost (`serve`, its flow-run child, the Connect server), which a
shared machine disturbs far less than the wall time.

    uv run python bench/flow_overhead.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

BENCH_PORTS = {"connect_port": "15043", "ui_port": "14083", "prefect_port": "14283"}
SYMBOLS = [f"S{i:02d}-USD" for i in range(20)]
STEPS = {"generate_candles": "Spark", "validate_candles": "GX", "publish_candles": "WAP"}
DEPLOYMENT = "OHLCV 1-Minute Pipeline/ohlcv-1m"


def _configure(work: Path) -> None:
    """Every OHLCV_ setting of this bench, in the environment `ohlcv serve` inherits."""
    os.environ["OHLCV_DATA_DIR"] = str(work / "data")
    os.environ["OHLCV_GX_DIR"] = str(work / "gx")
    for name, port in BENCH_PORTS.items():
        os.environ[f"OHLCV_{name.upper()}"] = port
    os.environ.pop("SPARK_REMOTE", None)
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # How often `serve` looks for runs to start: the pick-up delay is not part of a run's time,
    # only of the bench's.
    os.environ["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"


def _cpu_s(*pids: int) -> float:
    """CPU seconds of these processes and their finished children (user + system).

    `serve` runs each flow run in a child process; with the Connect server that is all the
    work a run does. On a shared machine a run's wall time also measures its neighbours.
    """
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def _reaped_cpu_s(serve_pid: int, server_pid: int, timeout_s: float = 30) -> float:
    """:func:`_cpu_s` once `serve` has reaped the flow run's process (its CPU counts then)."""
    children = Path(f"/proc/{serve_pid}/task/{serve_pid}/children")
    deadline = time.monotonic() + timeout_s
    while children.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    return _cpu_s(serve_pid, server_pid)


def _wait_for_deployments(client: Any, names: list[str], timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = {d.name: d for d in client.read_deployments()}
        if all(n in found for n in names):
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"`ohlcv serve` registered {sorted(found)}, not {names}")
        time.sleep(1)


def _only_manual_runs(client: Any, deployment_id: Any) -> None:
    """Turn the 1m schedule off and delete the runs it already planned: a scheduled run
    beside the bench's would share the machine with it and skip or delay it."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    for schedule in client.read_deployment_schedules(deployment_id):
        client.update_deployment_schedule(deployment_id, schedule.id, active=False)
    planned = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
    )
    for run in planned:
        client.delete_flow_run(run.id)


def _metrics(client: Any, flow_run_id: Any) -> dict[str, str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    artifacts = client.read_artifacts(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )
    for artifact in artifacts:
        if artifact.key == "ohlcv-1m-metrics":
            rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            return {row["metric"]: row["value"] for row in rows}
    raise RuntimeError(f"flow run {flow_run_id} left no metrics artifact")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="runs not counted (JVM warm-up)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ohlcv-flow-bench-"))
    _configure(work)
    from core.tables import ensure_tables
    from core.timeframes import TIMEFRAMES
    from flows.pipeline import RunRequest, run_pipeline
    from infra import prefect_server, stack
    from infra.catalog import open_catalog
    from infra.session import connect
    from ingest import ingest
    from ingest.demo import demo_trades
    from settings import Settings

    settings = Settings()
    serve: subprocess.Popen[bytes] | None = None
    runs: list[dict[str, Any]] = []
    next_id = 1
    try:
        stack.up(settings)
        prefect_server.up(settings)
        url = prefect_server.api_url(settings)
        os.environ["PREFECT_API_URL"] = url  # for `ohlcv serve`
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        catalog = open_catalog(settings)
        ensure_tables(catalog, settings.namespace)

        def deliver(start: datetime, end: datetime) -> None:
            nonlocal next_id
            batch = demo_trades(
                start=start,
                end=end,
                symbols=SYMBOLS,
                trades_per_minute=60,
                seed=next_id,
                first_trade_id=next_id,
                daily_cycle=False,
            )
            next_id += batch.num_rows
            ingest(catalog, settings.namespace, batch, source=f"bench-{next_id}", now=end)

        now = datetime.now(UTC)
        delivered_to = now - timedelta(hours=1)
        deliver(delivered_to, now)
        delivered_to = now
        spark = connect(settings)
        run_pipeline(spark, settings, TIMEFRAMES["1m"], RunRequest(now=now))  # steady state
        spark.stop()

        serve = subprocess.Popen(
            [sys.executable, "-c", "from cli.main import main; main()", "serve"],
            stdout=(work / "serve.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        with (
            temporary_settings(updates={PREFECT_API_URL: url}),
            get_client(sync_client=True) as client,
        ):
            found = _wait_for_deployments(client, [f"ohlcv-{tf}" for tf in TIMEFRAMES])
            for name, deployment in found.items():
                if name != "ohlcv-1m":
                    client.pause_deployment(deployment.id)
            _only_manual_runs(client, found["ohlcv-1m"].id)
            server_pid = stack.status(settings).pid
            assert server_pid is not None
            for n in range(args.warmup + args.runs):
                now = datetime.now(UTC)
                deliver(delivered_to, now)
                delivered_to = now
                cpu = _cpu_s(serve.pid, server_pid)
                # (typed sync-or-async; called outside an event loop it returns the run)
                flow_run = cast("FlowRun", run_deployment(DEPLOYMENT, timeout=600, poll_interval=1))
                state = flow_run.state
                if state is None or not state.is_completed():
                    raise RuntimeError(f"run {n}: {flow_run.name} ended {state}; see {work}")
                assert flow_run.start_time and flow_run.end_time
                total = (flow_run.end_time - flow_run.start_time).total_seconds()
                metrics = _metrics(client, flow_run.id)
                steps = {STEPS[s]: float(metrics[f"{s}_s"]) for s in STEPS}
                row = {
                    "run": n + 1,
                    "warmup": n < args.warmup,
                    "total_s": round(total, 2),
                    **steps,
                    "Prefect and session": round(total - sum(steps.values()), 2),
                    "cpu_s": round(_reaped_cpu_s(serve.pid, server_pid) - cpu, 2),
                    "trades_read": int(metrics.get("trades_read", "0")),
                }
                runs.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if serve is not None:
            serve.terminate()
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                serve.kill()
        prefect_server.down(settings)
        stack.down(settings)

    counted = [r for r in runs if not r["warmup"]]
    parts = ["total_s", *STEPS.values(), "Prefect and session", "cpu_s"]
    summary = {
        "runs": len(counted),
        **{f"median_{p}": round(statistics.median(r[p] for r in counted), 2) for p in parts},
        "goal_total_s": 6.0,
    }
    print(json.dumps(summary, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"flow-overhead-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps({"summary": summary, "runs": runs}))
    print(f"written {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
