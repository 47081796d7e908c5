"""Chaos benchmark: `ohlcv serve` under faults, then every candle against an oracle. Not a test:
it prints numbers.

It starts its own local stack (`ohlcv stack up`: Spark Connect and Prefect servers, own data
directory and ports) and `ohlcv serve` (the five candle deployments and maintenance) as
subprocesses, as an operator would, and for ``--minutes``:

- a compressed clock: each deployment is triggered through Prefect's API (`run_deployment`)
  far more often than its cron (1m every 20 s ... maintenance every 10 min), unless a run of
  it is already waiting; `serve` executes them as it does scheduled runs (the crons stay on);
- a feed: every few seconds a small batch of trades near the wall clock (with late arrivals
  inside the batch, an older late batch now and then, exact duplicates, replays of a whole
  batch), appended with `ingest` (PyIceberg, in this process); every trade id sent is kept;
- a fault every 1-3 minutes (seeded): kill -9 of the Spark Connect server, of the Prefect
  server or of `serve`, or SIGTERM of a running flow-run process (a child of `serve`); after a
  short random delay the bench restarts what it killed (`ohlcv stack up`, `ohlcv serve`), and
  restarts anything else it finds down, as a supervisor would.

At the end it stops the feed, restarts anything down, triggers each timeframe until a run that
started after the feed stopped has published, and compares every candle of the five tables
(main branch) with a recomputation from ``trades`` in DuckDB. It prints faults by kind, flow runs
by state (failed and crashed ones, and whether a later run of the deployment completed), the
longest time from a fault to the next published run, duplicate candle keys, candles differing
from the oracle, candles missing (closed windows only), trades lost (sent, not in ``trades``),
and processes left hanging (a flow-run process alive 60 s after its run ended, a command that
did not exit).

    uv run python bench/chaos.py --minutes 60
    uv run python bench/chaos.py --minutes 5 --seed 2     # a quick look

Ports and data directory default to this bench's own (never the default 15002/4200); the data
directory is wiped at start and kept at the end for inspection (server logs, serve.log).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chaos_feed import Feed, log
from chaos_report import (
    CANDLE_TIMEFRAMES,
    Fault,
    Record,
    all_runs,
    child_env,
    children,
    cmdline,
    compare,
    configure,
    published_runs,
    py_spy,
    running_runs,
    start_ticks,
    started_at,
    summarise,
)

from core.timeframes import TIMEFRAMES

CHAOS_DATA_DIR = Path("/tmp/chaos-data")
CHAOS_CONNECT_PORT = 15602
CHAOS_UI_PORT = 14652
CHAOS_PREFECT_PORT = 4602

MAINTENANCE = "OHLCV Table Maintenance/ohlcv-maintenance"
TRIGGER_EVERY_S = {"1m": 30, "5m": 60, "30m": 120, "1h": 180, "1d": 240, "maintenance": 900}
"""The compressed clock: how often each deployment is run (its cron: 5 min ... daily)."""
WAITING = ("SCHEDULED", "PENDING")
FAULTS = ("kill_connect", "kill_prefect", "kill_serve", "sigterm_flow")
HANG_AFTER_S = 60.0
STALE_PENDING = timedelta(minutes=3)
COMMAND_TIMEOUT_S = 600.0


DEPLOYMENTS = {
    **{tf: f"{TIMEFRAMES[tf].flow_name}/ohlcv-{tf}" for tf in CANDLE_TIMEFRAMES},
    "maintenance": MAINTENANCE,
}


class Chaos(Feed):
    """The stack, `serve`, the feed, the trigger loop and the faults of one bench run."""

    def __init__(self, args: argparse.Namespace) -> None:
        from infra.catalog import open_catalog
        from settings import Settings

        self.args = args
        self.rng = random.Random(args.seed)  # faults
        self.feed_rng = random.Random(args.seed + 1)
        self.settings = Settings()
        self.data_dir: Path = args.data_dir
        self.catalog = open_catalog(self.settings)
        self.record = Record()
        self.stop_feed = threading.Event()
        self.stop_triggers = threading.Event()
        self.serve: subprocess.Popen[bytes] | None = None
        self.serve_log = (self.data_dir / "serve.log").open("ab")
        self.down: set[str] = set()  # what a fault took down and the bench will restart itself
        self.lock = threading.Lock()
        self.next_id = 1
        self.fed_to = datetime.now(UTC)
        self.feed_stopped_at: datetime | None = None

    # Processes ----------------------------------------------------------------------------

    def command(self, *argv: str) -> bool:
        """Run an `ohlcv` command as an operator would; False when it failed or hung."""
        cmd = [sys.executable, "-c", "from cli.main import main; main()", *argv]
        with (self.data_dir / "commands.log").open("ab") as out:
            out.write(f"\n=== {datetime.now(UTC).isoformat()} ohlcv {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env())
            try:
                return proc.wait(timeout=COMMAND_TIMEOUT_S) == 0
            except subprocess.TimeoutExpired:
                self.record.commands_not_exited.append(f"ohlcv {' '.join(argv)} (pid {proc.pid})")
                log(f"ohlcv {' '.join(argv)} did not exit within {COMMAND_TIMEOUT_S:.0f} s")
                proc.kill()
                proc.wait()
                return False

    def stack_up(self) -> bool:
        ok = self.command("stack", "up")
        if not ok:
            self.record.restarts_failed["stack up"] += 1
            log("`ohlcv stack up` failed (see commands.log)")
        return ok

    def start_serve(self) -> None:
        env = child_env()
        # How often `serve` looks for runs to start (default 10 s): the clock is compressed.
        env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"
        self.serve_log.write(f"\n=== {datetime.now(UTC).isoformat()} ohlcv serve\n".encode())
        self.serve_log.flush()
        self.serve = subprocess.Popen(
            [sys.executable, "-c", "from cli.main import main; main()", "serve"],
            stdout=self.serve_log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def serve_alive(self) -> bool:
        return self.serve is not None and self.serve.poll() is None

    def connect_pid(self) -> int | None:
        from infra import stack

        return stack.status(self.settings).pid

    def prefect_pid(self) -> int | None:
        from infra import prefect_server

        return prefect_server.status(self.settings).pid

    def flow_processes(self) -> list[int]:
        """Flow-run processes alive now: children of `serve` (the runner spawns one per run),
        and the ones a killed `serve` left behind."""
        pids = []
        if self.serve_alive():
            assert self.serve is not None
            for pid in children(self.serve.pid):
                ticks = start_ticks(pid)
                if ticks and "resource_tracker" not in cmdline(pid):
                    self.record.flow_processes.setdefault((pid, ticks), time.time())
        for pid, ticks in self.record.flow_processes:
            if start_ticks(pid) == ticks:
                pids.append(pid)
        return pids

    # Compressed clock ----------------------------------------------------------------------

    def triggers(self) -> None:
        from prefect.deployments import run_deployment

        due = dict.fromkeys(DEPLOYMENTS, time.monotonic() + 10)
        while not self.stop_triggers.wait(2):
            for name, deployment in DEPLOYMENTS.items():
                if time.monotonic() < due[name]:
                    continue
                try:
                    if not self.waiting_runs(deployment):
                        run_deployment(deployment, timeout=0)
                        self.record.triggered[name] += 1
                    due[name] = time.monotonic() + TRIGGER_EVERY_S[name]
                except Exception as e:  # Prefect may be down: try again later
                    self.record.trigger_errors[type(e).__name__] += 1
                    due[name] = time.monotonic() + 10

    def waiting_runs(self, deployment: str) -> int:
        """Runs of ``deployment`` not started yet (scheduled, pending, awaiting a slot)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        with get_client(sync_client=True) as client:
            found = client.read_deployment_by_name(deployment)
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType(s) for s in WAITING])
                    )
                ),
            )
        now = datetime.now(UTC)
        # Future cron runs are not waiting: only those due now. A run left submitting
        # (PENDING) by a `serve` killed meanwhile stays so for good: not waiting either.
        return sum(
            1
            for r in runs
            if (r.expected_start_time is None or r.expected_start_time <= now)
            and not (
                r.state is not None
                and r.state.type == StateType.PENDING
                and now - r.state.timestamp > STALE_PENDING
            )
        )

    # Faults --------------------------------------------------------------------------------

    def inject(self, kind: str) -> Fault | None:
        pid: int | None = None
        if kind == "kill_connect":
            pid = self.connect_pid()
            if pid is not None:
                self.down.add("stack")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        elif kind == "kill_prefect":
            pid = self.prefect_pid()
            if pid is not None:
                self.down.add("stack")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        elif kind == "kill_serve":
            if self.serve_alive():
                assert self.serve is not None
                pid = self.serve.pid
                self.down.add("serve")
                self.serve.kill()
                self.serve.wait()
        elif kind == "sigterm_flow":
            deadline = time.monotonic() + 90  # wait for a run to be running
            while pid is None and time.monotonic() < deadline:
                running = self.flow_processes()
                if running:
                    pid = self.rng.choice(running)
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:  # it ended meanwhile: pick another
                        pid = None
                else:
                    time.sleep(1)
        if pid is None:
            log(f"fault {kind}: nothing to hit")
            return None
        fault = Fault(kind, datetime.now(UTC), pid)
        self.record.faults.append(fault)
        log(f"fault {kind}: pid {pid}")
        return fault

    def supervise(self) -> None:
        """Restart what is down, as an operator's supervisor would."""
        stack_down = self.connect_pid() is None or self.prefect_pid() is None
        if stack_down:
            if "stack" not in self.down:
                which = "connect" if self.connect_pid() is None else "prefect"
                self.record.unexpected_exits[which] += 1
                log(f"{which} server found down (not by the bench)")
            if self.stack_up():
                self.down.discard("stack")
        if not self.serve_alive():
            if "serve" not in self.down and self.serve is not None:
                self.record.unexpected_exits["serve"] += 1
                log(f"serve exited by itself (rc {self.serve.returncode}); see serve.log")
            self.start_serve()
            self.down.discard("serve")

    def chaos(self, until: float) -> None:
        next_fault = time.monotonic() + self.rng.uniform(*self.args.fault_every_s)
        while time.monotonic() < until:
            self.flow_processes()
            if time.monotonic() >= next_fault:
                fault = self.inject(self.rng.choice(self.args.faults))
                time.sleep(self.rng.uniform(3, 20))
                self.supervise()
                if fault is not None:
                    fault.restarted_at = datetime.now(UTC)
                next_fault = time.monotonic() + self.rng.uniform(*self.args.fault_every_s)
            else:
                self.supervise()
            time.sleep(2)

    # Catch-up ------------------------------------------------------------------------------

    def catch_up(self, timeout_s: float) -> dict[str, datetime | None]:
        """Trigger each timeframe until a run started after the feed stopped has published."""
        from prefect.deployments import run_deployment

        assert self.feed_stopped_at is not None
        done: dict[str, datetime | None] = dict.fromkeys(CANDLE_TIMEFRAMES)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(done.values()):
            self.supervise()
            self.flow_processes()
            published = published_runs(self.feed_stopped_at, changed_only=False)
            for tf in CANDLE_TIMEFRAMES:
                if done[tf] is None and published.get(tf):
                    done[tf] = min(published[tf])
                    log(f"caught up: {tf}")
                elif done[tf] is None:
                    with contextlib.suppress(Exception):
                        if not self.waiting_runs(DEPLOYMENTS[tf]) and not running_runs(tf):
                            run_deployment(DEPLOYMENTS[tf], timeout=0)
                            self.record.triggered[tf] += 1
            time.sleep(5)
        return done

    def hanging(self, runs: list[Any]) -> list[str]:
        """Flow-run processes still alive 60 s after their run ended (or unmatched to a run)."""
        found = []
        ended = sorted(
            (r.start_time.timestamp(), r.end_time.timestamp(), r.name)
            for r in runs
            if r.start_time is not None and r.end_time is not None
        )
        for pid in self.flow_processes():
            started = started_at(pid)
            match = [e for e in ended if 0 <= e[0] - started < 60]
            if match and time.time() - match[0][1] > HANG_AFTER_S:
                found.append(
                    f"pid {pid}: run {match[0][2]} ended {time.time() - match[0][1]:.0f} s ago"
                )
                found.append(py_spy(pid))
            elif not match and time.time() - started > 900:
                found.append(f"pid {pid}: alive {time.time() - started:.0f} s, no run matched")
                found.append(py_spy(pid))
        return found


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=CHAOS_DATA_DIR)
    parser.add_argument("--connect-port", type=int, default=CHAOS_CONNECT_PORT)
    parser.add_argument("--ui-port", type=int, default=CHAOS_UI_PORT)
    parser.add_argument("--prefect-port", type=int, default=CHAOS_PREFECT_PORT)
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--per-minute", type=float, default=30, help="trades a symbol")
    parser.add_argument("--feed-every-s", type=float, default=5)
    parser.add_argument(
        "--fault-every-s", type=float, nargs=2, default=(60.0, 180.0), metavar=("MIN", "MAX")
    )
    parser.add_argument(
        "--faults", nargs="+", choices=FAULTS, default=list(FAULTS), help="kinds to inject"
    )
    parser.add_argument("--catch-up-min", type=float, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    configure(args)
    from infra import prefect_server, stack
    from settings import Settings

    settings = Settings()
    if stack.status(settings).running or prefect_server.status(settings).running:
        stack.down(settings)
        prefect_server.down(settings)
    shutil.rmtree(args.data_dir, ignore_errors=True)
    args.data_dir.mkdir(parents=True)
    signal.signal(signal.SIGTERM, _interrupted)

    chaos = Chaos(args)
    threads: list[threading.Thread] = []
    report: dict[str, Any] = {"minutes": args.minutes, "seed": args.seed}
    started = datetime.now(UTC)
    try:
        log(
            f"stack up in {args.data_dir} "
            f"(connect {args.connect_port}, prefect {args.prefect_port})"
        )
        if not chaos.stack_up():
            raise SystemExit(f"`ohlcv stack up` failed: see {args.data_dir / 'commands.log'}")
        chaos.start_serve()
        threads = [
            threading.Thread(target=chaos.feed, name="feed", daemon=True),
            threading.Thread(target=chaos.triggers, name="triggers", daemon=True),
        ]
        for thread in threads:
            thread.start()
        chaos.chaos(until=time.monotonic() + args.minutes * 60)
        log("stopping the feed and the compressed clock; catching up")
        chaos.stop_feed.set()
        chaos.stop_triggers.set()
        for thread in threads:
            thread.join(timeout=COMMAND_TIMEOUT_S)
        time.sleep(3)
        chaos.supervise()
        assert chaos.feed_stopped_at is not None
        caught = chaos.catch_up(args.catch_up_min * 60)
        report.update(summarise(chaos.record, started, caught))
        report["runs_in_flight_at_end"] = sum(
            1
            for r in all_runs(started)
            if r.state_type is not None and r.state_type.value in ("RUNNING", "PENDING")
        )
        closed_by = min((t for t in caught.values() if t), default=chaos.feed_stopped_at)
        closed_by = min(closed_by, chaos.feed_stopped_at)
        report["oracle"] = compare(
            chaos.catalog, settings.namespace, closed_by, chaos.record.sent_ids
        )
        # Let serve's runs end, then look for flow-run processes that outlived their run.
        time.sleep(HANG_AFTER_S + 5)
        report["hanging"] = chaos.hanging(all_runs(started))
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
    except Exception as e:  # the figures gathered so far are still worth printing
        report["bench_error"] = f"{type(e).__name__}: {e}"
        log(f"bench error, cleaning up: {report['bench_error']}")
    finally:
        chaos.stop_feed.set()
        chaos.stop_triggers.set()
        if chaos.serve_alive():
            assert chaos.serve is not None
            chaos.serve.terminate()
            try:
                chaos.serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                report.setdefault("hanging", []).append("serve did not exit 60 s after SIGTERM")
                chaos.serve.kill()
        left = chaos.flow_processes()
        if left:
            time.sleep(HANG_AFTER_S)
            for pid in chaos.flow_processes():
                report.setdefault("hanging", []).append(
                    f"flow-run pid {pid} alive {HANG_AFTER_S:.0f} s after serve stopped"
                )
                report["hanging"].append(py_spy(pid))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        prefect_server.down(settings)
        stack.down(settings)
    report["wall_minutes"] = round((datetime.now(UTC) - started).total_seconds() / 60, 1)
    print(json.dumps(report, indent=2, default=str))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"chaos-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(report, default=str))
    print(f"written {out}")


if __name__ == "__main__":
    main()
