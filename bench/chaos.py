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
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path
from typing import Any

from core.timeframes import TIMEFRAMES

CHAOS_DATA_DIR = Path("/tmp/chaos-data")
CHAOS_CONNECT_PORT = 15602
CHAOS_UI_PORT = 14652
CHAOS_PREFECT_PORT = 4602
DEFAULT_PORTS = (15002, 4200)  # a user's stack: never this bench's

CANDLE_TIMEFRAMES = ("1m", "5m", "30m", "1h", "1d")
MAINTENANCE = "OHLCV Table Maintenance/ohlcv-maintenance"
TRIGGER_EVERY_S = {"1m": 30, "5m": 60, "30m": 120, "1h": 180, "1d": 240, "maintenance": 900}
"""The compressed clock: how often each deployment is run (its cron: 5 min ... daily)."""
WAITING = ("SCHEDULED", "PENDING")
FAULTS = ("kill_connect", "kill_prefect", "kill_serve", "sigterm_flow")
HANG_AFTER_S = 60.0
STALE_PENDING = timedelta(minutes=3)
COMMAND_TIMEOUT_S = 600.0
EIGHT_PLACES = Decimal("0.00000001")


DEPLOYMENTS = {
    **{tf: f"{TIMEFRAMES[tf].flow_name}/ohlcv-{tf}" for tf in CANDLE_TIMEFRAMES},
    "maintenance": MAINTENANCE,
}


def _log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


@dataclass
class Fault:
    kind: str
    at: datetime
    pid: int | None
    restarted_at: datetime | None = None


@dataclass
class Record:
    """What happened, for the summary."""

    faults: list[Fault] = field(default_factory=list)
    unexpected_exits: Counter[str] = field(default_factory=Counter)
    restarts_failed: Counter[str] = field(default_factory=Counter)
    commands_not_exited: list[str] = field(default_factory=list)
    ingest_errors: Counter[str] = field(default_factory=Counter)
    trigger_errors: Counter[str] = field(default_factory=Counter)
    triggered: Counter[str] = field(default_factory=Counter)
    sent_ids: set[int] = field(default_factory=set)
    batches: int = 0
    replays: int = 0
    late_batches: int = 0
    flow_processes: dict[tuple[int, int], float] = field(default_factory=dict)
    """(pid, start ticks) of every flow-run process seen -> when first seen (epoch s)."""


class Chaos:
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
        cmd = [sys.executable, "-c", "from flows.cli import main; main()", *argv]
        with (self.data_dir / "commands.log").open("ab") as out:
            out.write(f"\n=== {datetime.now(UTC).isoformat()} ohlcv {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_child_env())
            try:
                return proc.wait(timeout=COMMAND_TIMEOUT_S) == 0
            except subprocess.TimeoutExpired:
                self.record.commands_not_exited.append(f"ohlcv {' '.join(argv)} (pid {proc.pid})")
                _log(f"ohlcv {' '.join(argv)} did not exit within {COMMAND_TIMEOUT_S:.0f} s")
                proc.kill()
                proc.wait()
                return False

    def stack_up(self) -> bool:
        ok = self.command("stack", "up")
        if not ok:
            self.record.restarts_failed["stack up"] += 1
            _log("`ohlcv stack up` failed (see commands.log)")
        return ok

    def start_serve(self) -> None:
        env = _child_env()
        # How often `serve` looks for runs to start (default 10 s): the clock is compressed.
        env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"
        self.serve_log.write(f"\n=== {datetime.now(UTC).isoformat()} ohlcv serve\n".encode())
        self.serve_log.flush()
        self.serve = subprocess.Popen(
            [sys.executable, "-c", "from flows.cli import main; main()", "serve"],
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
            for pid in _children(self.serve.pid):
                ticks = _start_ticks(pid)
                if ticks and "resource_tracker" not in _cmdline(pid):
                    self.record.flow_processes.setdefault((pid, ticks), time.time())
        for pid, ticks in self.record.flow_processes:
            if _start_ticks(pid) == ticks:
                pids.append(pid)
        return pids

    # Feed ----------------------------------------------------------------------------------

    def feed(self) -> None:
        from core.tables import ensure_tables

        ensure_tables(self.catalog, self.settings.namespace)
        previous = None
        while not self.stop_feed.wait(self.args.feed_every_s):
            try:
                previous = self.feed_once(previous)
            except Exception as e:  # a bug of the bench's: say so, keep feeding
                _log(f"feed: {type(e).__name__}: {e}")
        self.feed_stopped_at = datetime.now(UTC)

    def feed_once(self, previous: Any) -> Any:
        """One delivery: the trades since the last one, sometimes a late batch or a replay."""
        now = datetime.now(UTC)
        batch = self.batch(self.fed_to, now)
        self.fed_to = now
        self.deliver(batch)
        if self.feed_rng.random() < 0.15:  # trades of a few minutes ago, arriving late
            back = timedelta(seconds=self.feed_rng.uniform(60, 900))
            self.deliver(self.batch(now - back - timedelta(seconds=20), now - back))
            self.record.late_batches += 1
        if previous is not None and self.feed_rng.random() < 0.1:  # an upstream replay
            self.deliver(previous)
            self.record.replays += 1
        return batch

    def batch(self, start: datetime, end: datetime) -> Any:
        from ingest.demo import demo_trades

        table = demo_trades(
            start=start,
            end=end,
            symbols=[f"C{i:02d}-USD" for i in range(self.args.symbols)],
            trades_per_minute=self.args.per_minute,
            seed=self.feed_rng.randrange(2**31),
            late_fraction=0.05,
            duplicate_fraction=0.02,
            bad_rows=0,
            first_trade_id=self.next_id,
            daily_cycle=False,
        )
        self.next_id += table.num_rows + 1
        return table

    def deliver(self, batch: Any) -> None:
        """Append a batch, retrying as an upstream writer would (ingest is idempotent)."""
        from ingest import ingest

        if not batch.num_rows:
            return
        self.record.sent_ids.update(batch.column("trade_id").to_pylist())
        self.record.batches += 1
        for attempt in range(20):
            try:
                ingest(self.catalog, self.settings.namespace, batch, source=f"chaos-{self.next_id}")
                return
            except Exception as e:  # counted and retried, as a feed would
                self.record.ingest_errors[type(e).__name__] += 1
                _log(f"ingest failed ({type(e).__name__}: {str(e)[:200]}), retry {attempt + 1}")
                time.sleep(2)
        _log("ingest gave up after 20 attempts: these trades count as lost")

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
            _log(f"fault {kind}: nothing to hit")
            return None
        fault = Fault(kind, datetime.now(UTC), pid)
        self.record.faults.append(fault)
        _log(f"fault {kind}: pid {pid}")
        return fault

    def supervise(self) -> None:
        """Restart what is down, as an operator's supervisor would."""
        stack_down = self.connect_pid() is None or self.prefect_pid() is None
        if stack_down:
            if "stack" not in self.down:
                which = "connect" if self.connect_pid() is None else "prefect"
                self.record.unexpected_exits[which] += 1
                _log(f"{which} server found down (not by the bench)")
            if self.stack_up():
                self.down.discard("stack")
        if not self.serve_alive():
            if "serve" not in self.down and self.serve is not None:
                self.record.unexpected_exits["serve"] += 1
                _log(f"serve exited by itself (rc {self.serve.returncode}); see serve.log")
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
                    _log(f"caught up: {tf}")
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
            started = _started_at(pid)
            match = [e for e in ended if 0 <= e[0] - started < 60]
            if match and time.time() - match[0][1] > HANG_AFTER_S:
                found.append(
                    f"pid {pid}: run {match[0][2]} ended {time.time() - match[0][1]:.0f} s ago"
                )
                found.append(_py_spy(pid))
            elif not match and time.time() - started > 900:
                found.append(f"pid {pid}: alive {time.time() - started:.0f} s, no run matched")
                found.append(_py_spy(pid))
        return found


# Prefect read-outs ------------------------------------------------------------------------


def _client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def all_runs(since: datetime) -> list[Any]:
    """Flow runs of the six deployments created since ``since``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    runs: list[Any] = []
    with _client() as client:
        while True:
            page = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=since)  # type: ignore[arg-type]
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
                offset=len(runs),
            )
            runs += page
            if len(page) < 200:
                return [r for r in runs if r.deployment_id is not None]


def deployment_names() -> dict[Any, str]:
    with _client() as client:
        return {d.id: d.name.removeprefix("ohlcv-") for d in client.read_deployments()}


def published_flags(since: datetime) -> dict[Any, bool]:
    """Flow run id -> whether its metrics artifact says it published (skipped runs have none)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    flags: dict[Any, bool] = {}
    offset = 0
    with _client() as client:
        while True:
            page = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="ohlcv-")),
                limit=200,
                offset=offset,
            )
            offset += len(page)
            for artifact in page:
                if artifact.created is None or artifact.created < since:
                    continue
                if not (artifact.key or "").endswith("-metrics"):
                    continue
                data = artifact.data
                rows = json.loads(data) if isinstance(data, str) else data
                values = {row["metric"]: row["value"] for row in rows or []}
                if artifact.flow_run_id is not None:
                    flags[artifact.flow_run_id] = values.get("published") == "True"
            if len(page) < 200:
                return flags


def published_runs(since: datetime, changed_only: bool = True) -> dict[str, list[datetime]]:
    """End times of completed runs started after ``since`` that published (with
    ``changed_only=False``: that ran the pipeline, whether or not a candle changed), by
    timeframe."""
    names = deployment_names()
    flags = published_flags(since)
    found: dict[str, list[datetime]] = defaultdict(list)
    for run in all_runs(since - timedelta(minutes=30)):
        if (
            run.state_type is not None
            and run.state_type.value == "COMPLETED"
            and run.id in flags
            and (flags[run.id] or not changed_only)
            and run.start_time is not None
            and run.start_time >= since
            and run.end_time is not None
        ):
            found[names.get(run.deployment_id, "?")].append(run.end_time)
    return found


def held_slots() -> dict[str, int]:
    """Concurrency slots (writer slots, deployment limits) held now: once every run has ended,
    a held slot is one nobody will give back."""
    with _client() as client:
        return {
            limit.name: limit.active_slots
            for limit in client.read_global_concurrency_limits(limit=100)
            if limit.active_slots
        }


def running_runs(tf: str) -> bool:
    names = deployment_names()
    return any(
        r.state_type is not None
        and r.state_type.value == "RUNNING"
        and names.get(r.deployment_id) == tf
        for r in all_runs(datetime.now(UTC) - timedelta(hours=2))
    )


# The oracle ---------------------------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(value: datetime) -> int:
    """Microseconds since the epoch, exactly (a float timestamp may be off by one)."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(microseconds=1)


def compare(catalog: Any, namespace: str, closed_by: datetime, sent: set[int]) -> dict[str, Any]:
    """Every candle of the five tables (main) against a recomputation in DuckDB."""
    import duckdb

    from core.tables import CANDLE_KEY
    from core.timeframes import TIMEFRAMES

    trades = catalog.load_table((namespace, "trades")).scan().to_arrow()
    stored_ids = trades.column("trade_id").to_pylist()
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    db.register("trades", trades)
    result: dict[str, Any] = {
        "trades_sent": len(sent),
        "trades_stored": len(stored_ids),
        "trades_lost": len(sent - set(stored_ids)),
        "trade_keys_stored_twice": len(stored_ids) - len(set(stored_ids)),
        "tables": {},
    }
    for tf in CANDLE_TIMEFRAMES:
        width = TIMEFRAMES[tf].width_us
        oracle_rows = db.execute(
            """
            SELECT exchange, symbol, epoch_us(ts) // $w * $w AS ws,
                   arg_min(price, (epoch_us(ts), trade_id)) AS open, max(price) AS high,
                   min(price) AS low, arg_max(price, (epoch_us(ts), trade_id)) AS close,
                   sum(quantity) AS volume,
                   -- DECIMAL(18, 8) * DECIMAL(18, 8) overflows DuckDB's DECIMAL(18)
                   sum(price::DECIMAL(38, 8) * quantity::DECIMAL(38, 8)) AS quote_volume,
                   count(*) AS trade_count, epoch_us(min(ts)) AS open_ts,
                   epoch_us(max(ts)) AS close_ts
            FROM trades GROUP BY ALL
            """,
            {"w": width},
        ).fetchall()
        oracle: dict[tuple[str, str, int], dict[str, Any]] = {}
        for ex, sym, ws, o, h, lo, c, v, qv, n, ots, cts in oracle_rows:
            with localcontext() as ctx:
                ctx.prec = 80
                vwap = (Decimal(qv) / Decimal(v)).quantize(EIGHT_PLACES, rounding=ROUND_HALF_UP)
            oracle[(ex, sym, ws)] = {
                "window_end": ws + width,
                "open": o,
                "high": h,
                "low": lo,
                "close": c,
                "volume": v,
                "quote_volume": qv,
                "trade_count": n,
                "vwap": vwap,
                "open_ts": ots,
                "close_ts": cts,
                "trading_date": datetime.fromtimestamp(ws / 1e6, UTC).date(),
                "synthetic": False,
            }
        table = catalog.load_table((namespace, TIMEFRAMES[tf].table)).scan().to_arrow()
        counts: Counter[tuple[str, str, int]] = Counter()
        differing: list[str] = []
        extra = 0
        for row in table.to_pylist():
            key = (row["exchange"], row["symbol"], _us(row["window_start"]))
            counts[key] += 1
            want = oracle.get(key)
            if want is None:
                extra += 1
                continue
            got = {
                **row,
                "window_end": _us(row["window_end"]),
                "open_ts": _us(row["open_ts"]) if row["open_ts"] else None,
                "close_ts": _us(row["close_ts"]) if row["close_ts"] else None,
            }
            wrong = [k for k, v in want.items() if got.get(k) != v]
            if wrong:
                differing.append(
                    f"{tf} {key}: " + ", ".join(f"{k} {got.get(k)} != {want[k]}" for k in wrong)
                )
        closed = {k for k, w in oracle.items() if w["window_end"] <= _us(closed_by)}
        result["tables"][tf] = {
            "candles": table.num_rows,
            "oracle_candles": len(oracle),
            "duplicate_keys": sum(1 for n in counts.values() if n > 1),
            "differing": len(differing),
            "missing_closed": len(closed - set(counts)),
            "extra": extra,
            "examples": differing[:5],
        }
        assert CANDLE_KEY == ("exchange", "symbol", "window_start")
    return result


# Small helpers --------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    """The environment of the bench's `ohlcv` commands: its OHLCV_ settings; no
    PREFECT_API_URL, so the commands use (and `stack up` starts) the bench's local server."""
    return {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}


def _children(pid: int) -> list[int]:
    """All descendants of ``pid``."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                for child in (task / "children").read_text().split():
                    found += [int(child), *_children(int(child))]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 when it is gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    gone = fields[0] in "ZX" or not Path(f"/proc/{pid}/exe").exists()  # zombie, exiting
    return 0 if gone else int(fields[19])


def _started_at(pid: int) -> float:
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    return boot + _start_ticks(pid) / os.sysconf("SC_CLK_TCK")


def _py_spy(pid: int) -> str:
    spy = shutil.which("py-spy") or str(Path.home() / ".local/bin/py-spy")
    try:
        done = subprocess.run(
            [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
        )
        return done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(no py-spy dump: {e})"


def _configure(args: argparse.Namespace) -> None:
    """Every OHLCV_ setting of this bench, in the environment its commands inherit."""
    ports = (args.connect_port, args.prefect_port)
    if set(ports) & set(DEFAULT_PORTS):
        raise SystemExit(f"ports {ports}: the defaults {DEFAULT_PORTS} are a user's, pick others")
    os.environ["OHLCV_DATA_DIR"] = str(args.data_dir)
    os.environ["OHLCV_GX_DIR"] = str(args.data_dir / "gx")
    os.environ["OHLCV_CONNECT_PORT"] = str(args.connect_port)
    os.environ["OHLCV_UI_PORT"] = str(args.ui_port)
    os.environ["OHLCV_PREFECT_PORT"] = str(args.prefect_port)
    os.environ["OHLCV_DRIVER_MEMORY"] = args.driver_memory
    os.environ.pop("SPARK_REMOTE", None)
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # The bench's own Prefect client (never a user's profile or server), set before Prefect
    # is imported (it reads its settings then); the `ohlcv` commands get no PREFECT_API_URL.
    os.environ["PREFECT_HOME"] = str(args.data_dir / "prefect-client")
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{args.prefect_port}/api"


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _summarise(
    chaos: Chaos, started: datetime, caught: dict[str, datetime | None]
) -> dict[str, Any]:
    rec = chaos.record
    runs = all_runs(started)
    names = deployment_names()
    flags = published_flags(started)
    by_state: dict[str, Counter[str]] = defaultdict(Counter)
    recovered: Counter[str] = Counter()
    unrecovered: list[str] = []
    for run in runs:
        tf = names.get(run.deployment_id, "?")
        state = run.state_name or "?"
        if state == "Completed" and run.id not in flags:
            state = "Completed (skipped)"
        by_state[tf][state] += 1
        if run.state_type is not None and run.state_type.value in ("FAILED", "CRASHED"):
            later = [
                r
                for r in runs
                if r.deployment_id == run.deployment_id
                and r.state_type is not None
                and r.state_type.value == "COMPLETED"
                and r.start_time is not None
                and run.start_time is not None
                and r.start_time > run.start_time
            ]
            if later:
                recovered[tf] += 1
            else:
                unrecovered.append(f"{tf} {run.name} {state}")
    published: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for run in runs:
        if flags.get(run.id) and run.start_time is not None and run.end_time is not None:
            published[names.get(run.deployment_id, "?")].append((run.start_time, run.end_time))
    to_publish: dict[str, float | None] = {}
    for tf in CANDLE_TIMEFRAMES:
        worst = 0.0
        for fault in rec.faults:
            ends = [end for start, end in published[tf] if start >= fault.at]
            if not ends:
                worst = float("inf")
                break
            worst = max(worst, (min(ends) - fault.at).total_seconds())
        to_publish[tf] = round(worst, 1) if worst != float("inf") else None
    return {
        "faults_by_kind": dict(Counter(f.kind for f in rec.faults)),
        "faults": [f"{f.at:%H:%M:%S} {f.kind} pid {f.pid}" for f in rec.faults],
        "unexpected_exits": dict(rec.unexpected_exits),
        "restarts_failed": dict(rec.restarts_failed),
        "triggered": dict(rec.triggered),
        "trigger_errors": dict(rec.trigger_errors),
        "feed": {
            "batches": rec.batches,
            "late_batches": rec.late_batches,
            "replayed_batches": rec.replays,
            "ingest_errors": dict(rec.ingest_errors),
        },
        "flow_runs_by_state": {tf: dict(c) for tf, c in sorted(by_state.items())},
        "failed_or_crashed_recovered": dict(recovered),
        "failed_or_crashed_not_recovered": unrecovered,
        "longest_fault_to_published_s": to_publish,
        "caught_up_at": {tf: t.isoformat() if t else None for tf, t in caught.items()},
        "flow_run_processes_seen": len(rec.flow_processes),
        "slots_held_at_end": held_slots(),
        "commands_not_exited": rec.commands_not_exited,
    }


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

    _configure(args)
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
        _log(
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
        _log("stopping the feed and the compressed clock; catching up")
        chaos.stop_feed.set()
        chaos.stop_triggers.set()
        for thread in threads:
            thread.join(timeout=COMMAND_TIMEOUT_S)
        time.sleep(3)
        chaos.supervise()
        assert chaos.feed_stopped_at is not None
        caught = chaos.catch_up(args.catch_up_min * 60)
        report.update(_summarise(chaos, started, caught))
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
        _log("interrupted: cleaning up")
    except Exception as e:  # the figures gathered so far are still worth printing
        report["bench_error"] = f"{type(e).__name__}: {e}"
        _log(f"bench error, cleaning up: {report['bench_error']}")
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
                report["hanging"].append(_py_spy(pid))
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
