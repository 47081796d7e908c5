"""Faults without loss or hangs: crashed writers, and what the next run makes of them."""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from prefect.states import State
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession

from core.tables import Tables, ensure_tables
from core.timeframes import TIMEFRAMES, Timeframe
from flows import pipeline
from flows.backfill import run_backfill
from flows.candle_flows import FLOWS
from flows.pipeline import RunRequest, tables_for
from flows.writers import one_writer
from infra import prefect_server as local_prefect
from infra import stack
from infra.catalog import open_catalog
from infra.session import close, connect
from settings import Settings
from spark_jobs import jobs, snapshots, wap
from tests.support.environment import export_settings
from tests.support.oracle import Trade, diff, expected_candles, stored_candles
from tests.support.ports import port
from tests.support.prefect import prefect_api, running_prefect_server
from tests.support.trades import START, SYMBOLS, assert_matches_oracle, deliver, random_trades

ONE_MINUTE = TIMEFRAMES["1m"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFECT_PORT = port(14210)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server with its services; yields its API URL."""
    with running_prefect_server(tmp_path_factory.mktemp("prefect"), PREFECT_PORT) as url:
        yield url


LONG_WRITE = (
    "INSERT INTO {table}.branch_{branch} SELECT t.* FROM {table} t "
    "CROSS JOIN (SELECT max(id) AS m FROM range(2000000000000)) WHERE m >= 0"
)
"""A write into the audit branch that would take hours and then commit duplicates."""

WRITER = f"""
import sys
from datetime import datetime
from flows import pipeline
from flows.candle_flows import FLOWS
from flows.pipeline import tables_for
from spark_jobs import wap

def long_generate(spark, settings, tf, request):
    table = tables_for(settings).candles(tf)
    wap.start_audit(spark, table)
    print("writing", flush=True)
    spark.sql({LONG_WRITE!r}.format(table=table, branch=wap.AUDIT_BRANCH))
    raise AssertionError("the long write finished")

pipeline.generate = long_generate
FLOWS["1m"](at=datetime.fromisoformat(sys.argv[1]))
"""
"""A 1m flow run (the real flow: writer slot, tasks, tagged session) whose generate step is a
long write; it prints ``writing`` when the write starts."""


def _start_writer(at: datetime, prefect_url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", WRITER, at.isoformat()],
            cwd=ROOT,
            env={**os.environ, "PREFECT_API_URL": prefect_url},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _running_jobs(settings: Settings) -> list[int] | None:
    """Ids of the Spark jobs running on the server (its monitoring API); None when the API
    did not answer in time (a loaded machine): the callers poll again."""
    base = f"http://127.0.0.1:{settings.ui_port}/api/v1/applications"
    try:
        with urllib.request.urlopen(base, timeout=30) as response:
            app = json.load(response)[0]["id"]
        with urllib.request.urlopen(f"{base}/{app}/jobs?status=running", timeout=30) as response:
            return [job["jobId"] for job in json.load(response)]
    except TimeoutError:
        return None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            return None
        raise


def _until(condition: Callable[[], bool], within_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within_s, f"{what}: not within {within_s} s"
        time.sleep(0.5)
    return time.monotonic() - started


def _writing(child: subprocess.Popen[bytes], log: Path, settings: Settings) -> None:
    """Wait until the child's long write runs on the server."""
    _until(
        lambda: child.poll() is None and "writing" in log.read_text(errors="replace"),
        300,
        f"the writer to start (exit {child.poll()}): {log.read_text(errors='replace')[-2000:]}",
    )
    _until(lambda: bool(_running_jobs(settings)), 120, "its write to run on the server")


def _published_once(spark: SparkSession, tables: Tables, settings: Settings) -> list[Trade]:
    now = START + timedelta(minutes=30)
    trades = random_trades(random.Random(81), START, now, 200, first_id=1)
    deliver(open_catalog(settings), tables, trades, now=now)
    pipeline.run_pipeline(spark, settings, ONE_MINUTE, RunRequest(now=now))
    return trades


def test_a_writer_killed_mid_write_leaves_no_zombie_and_blocks_its_table_only_for_its_lease(
    spark: SparkSession,
    tables: Tables,
    run_settings: Settings,
    prefect_server: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    trades = _published_once(spark, tables, run_settings)
    table = tables.candles(ONE_MINUTE)
    main = snapshots.main_snapshot_id(spark, table)
    now = START + timedelta(minutes=30)
    export_settings(monkeypatch, run_settings)
    # Given: a flow run killed with -9 in the middle of its write (its slot and its server-side
    # operation left behind)
    log = tmp_path / "writer.log"
    writer = _start_writer(now, prefect_server, log)
    try:
        _writing(writer, log, run_settings)
    finally:
        writer.kill()
        writer.wait(30)
    killed = time.monotonic()
    with prefect_api(prefect_server):
        # The dead process's slot is still taken: an impatient run is refused ...
        monkeypatch.setenv("OHLCV_WRITER_WAIT_S", "1")
        refused = cast(State[Any], FLOWS["1m"](at=now, return_state=True))
        message = str(refused.result(raise_on_failure=False))
        assert refused.is_failed() and "another writer" in message
        # ... the server drops the dead client's write (it never commits) ...
        _until(lambda: _running_jobs(run_settings) == [], 60, "the orphaned write to end")
        zombie_s = time.monotonic() - killed
        assert wap.branch_snapshot_id(spark, table, wap.AUDIT_BRANCH) == main
        # When: more trades arrive and the next run of the table comes, willing to wait
        more = random_trades(random.Random(84), START, now, 50, first_id=10_000)
        deliver(open_catalog(run_settings), tables, more, now=now)
        trades += more
        monkeypatch.setenv("OHLCV_WRITER_WAIT_S", "180")
        metrics = FLOWS["1m"](at=now)
        waited = time.monotonic() - killed
    # Then: it got the table once the dead writer's lease ran out, and published; nothing
    # committed behind it
    print(f"orphaned write ended {zombie_s:.0f} s after its client was killed")
    assert zombie_s < 45, zombie_s
    assert metrics.published
    assert waited < run_settings.writer_lease_s + 60, waited
    _until(lambda: _running_jobs(run_settings) == [], 30, "no job to run after the rerun")
    assert snapshots.main_snapshot_id(spark, table) == metrics.main_snapshot_id
    assert wap.branch_snapshot_id(spark, table, wap.AUDIT_BRANCH) == metrics.main_snapshot_id
    assert_matches_oracle(spark, tables, trades, [ONE_MINUTE])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_a_run_within_seconds_and_interrupts_its_server_work(
    signum: int,
    spark: SparkSession,
    tables: Tables,
    run_settings: Settings,
    prefect_server: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    trades = _published_once(spark, tables, run_settings)
    table = tables.candles(ONE_MINUTE)
    main = snapshots.main_snapshot_id(spark, table)
    export_settings(monkeypatch, run_settings)
    # Given: a flow run in the middle of a long write
    log = tmp_path / "writer.log"
    writer = _start_writer(START + timedelta(minutes=30), prefect_server, log)
    try:
        _writing(writer, log, run_settings)
        # When: a service manager (SIGTERM) or a user (Ctrl-C) stops it
        writer.send_signal(signum)
        sent = time.monotonic()
        writer.wait(120)
        ended = time.monotonic() - sent
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(30)
    # Then: it ended within seconds, having interrupted its write on the server first
    print(f"{signal.Signals(signum).name}: the run ended after {ended:.1f} s")
    assert writer.returncode != 0, log.read_text()
    assert ended < 30, ended
    # (cancelling the interrupted job's tasks takes the server a moment)
    _until(lambda: _running_jobs(run_settings) == [], 30, "the interrupted write to end")
    assert snapshots.main_snapshot_id(spark, table) == main
    assert wap.branch_snapshot_id(spark, table, wap.AUDIT_BRANCH) == main
    assert_matches_oracle(spark, tables, trades, [ONE_MINUTE])


class _KillServer(pipeline.Steps):
    """Steps that kill the Connect server (-9) at one point of a run.

    Every kill costs a server restart (the slowest part of the test), so each point is a phase
    no other point covers:

    - "during the MERGE": the server dies under a running server-side write (the client is
      inside a call; the write must never commit later);
    - "during the fast-forward": it dies racing the publish (the run may or may not have
      published; either way the rerun must leave main and audit consistent).

    The third phase, a server already dead when a run makes its next call (this class's former
    point "before the MERGE"), is the test's backfill case: the server is killed between two
    chunks, the next chunk's first call fails, and the rerun must resume.
    """

    POINTS = ("during the MERGE", "during the fast-forward")

    def __init__(self, settings: Settings, point: str) -> None:
        self.settings, self.point = settings, point
        self.killed_at: float | None = None

    def kill(self) -> None:
        pid = stack.status(self.settings).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        self.killed_at = time.monotonic()

    def generate(
        self, spark: SparkSession, settings: Settings, tf: Timeframe, request: RunRequest
    ) -> jobs.RunResult:
        if self.point == "during the MERGE":
            table = tables_for(settings).candles(tf)
            wap.start_audit(spark, table)
            threading.Timer(3, self.kill).start()
            spark.sql(LONG_WRITE.format(table=table, branch=wap.AUDIT_BRANCH))
            raise AssertionError("the long write finished although its server was killed")
        return super().generate(spark, settings, tf, request)

    def publish(self, spark: SparkSession, settings: Settings, tf: Timeframe) -> int | None:
        if self.point == "during the fast-forward":
            threading.Thread(target=self.kill).start()  # races the fast-forward call
        return super().publish(spark, settings, tf)


def _consistent(spark: SparkSession, tables: Tables, trades: list[Trade]) -> None:
    """Candles equal to the oracle without duplicates, ``audit`` where ``main`` is."""
    table = tables.candles(ONE_MINUTE)
    assert wap.branch_snapshot_id(spark, table, wap.AUDIT_BRANCH) == snapshots.main_snapshot_id(
        spark, table
    )
    assert not diff(expected_candles(trades, ONE_MINUTE), stored_candles(spark, table))


def _own_server(tmp_path: Path, connect_port: int, ui_port: int, **more: Any) -> Settings:
    """Settings of a local server of the test's own (to kill), in ``tmp_path``."""
    return Settings(
        data_dir=tmp_path,
        connect_port=connect_port,
        ui_port=ui_port,
        spark_remote=None,
        driver_memory="1g",
        gx_dir=tmp_path / "gx",
        **more,
    )


@pytest.mark.spark
@pytest.mark.stack  # starts a server of its own, to kill it
def test_killing_the_server_at_any_point_fails_promptly_and_the_rerun_recovers(
    tmp_path: Path,
) -> None:
    own = _own_server(tmp_path, port(15015), port(14055), connect_retry_s=5)
    stack.up(own)
    exits: dict[str, float] = {}
    try:
        catalog = open_catalog(own)
        ensure_tables(catalog, own.namespace)
        tables = tables_for(own)
        rng = random.Random(82)
        now = START + timedelta(minutes=30)
        trades = random_trades(rng, START, now, 200, first_id=1)
        deliver(catalog, tables, trades, now=now)
        spark = connect(own)
        pipeline.run_pipeline(spark, own, ONE_MINUTE, RunRequest(now=now))  # a first publish
        for n, point in enumerate(_KillServer.POINTS):
            # Given: new trades, and a run whose server is killed at this point
            late = random_trades(rng, START, now, 50, first_id=1_000 * (n + 1))
            deliver(catalog, tables, late, now=now)
            trades += late
            steps = _KillServer(own, point)
            try:
                pipeline.run_pipeline(spark, own, ONE_MINUTE, RunRequest(now=now), steps)
            except Exception:  # what the caller (a task, the CLI) gets
                assert steps.killed_at is not None
                exits[point] = time.monotonic() - steps.killed_at
            # (the fast-forward may win the race: then the run published before dying)
            with contextlib.suppress(Exception):
                close(spark)
            # When: the server is back and the next run comes
            stack.up(own)
            spark = connect(own)
            pipeline.run_pipeline(spark, own, ONE_MINUTE, RunRequest(now=now))
            # Then: equal to the oracle, no duplicate, the branches consistent
            _consistent(spark, tables, trades)

        # And a backfill whose server dies between two chunks (dead before the next chunk's
        # first call) resumes to the same candles
        end = START + timedelta(days=2)
        history = random_trades(rng, START + timedelta(hours=1), end, 300, first_id=100_000)
        deliver(catalog, tables, history, now=end)
        trades += history
        chunks = iter(run_backfill(own, ONE_MINUTE, START, end, spark=spark))
        assert next(chunks).metrics.published
        pid = stack.status(own).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(PySparkException):
            next(chunks)
        exits["between two backfill chunks"] = time.monotonic() - killed
        with contextlib.suppress(Exception):
            close(spark)
        stack.up(own)
        spark = connect(own)
        # (the same backfill resumes after the chunk published before the kill)
        rerun = run_backfill(own, ONE_MINUTE, START, end, spark=spark)
        assert rerun.resumed == 1 and all(c.metrics.published for c in rerun)
        _consistent(spark, tables, trades)

        # And a disk that fills up under a run: the server's writes fail (a file-size limit
        # set on the running server: writes past 1 KiB fail as on a full disk)
        more = random_trades(rng, START, now, 50, first_id=200_000)
        deliver(catalog, tables, more, now=end)
        trades += more
        pid = stack.status(own).pid
        assert pid is not None
        table = tables.candles(ONE_MINUTE)
        main = snapshots.main_snapshot_id(spark, table)
        unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1024, unlimited[1]))
        try:
            with pytest.raises(PySparkException, match=r"File too large|No space left"):
                pipeline.run_pipeline(spark, own, ONE_MINUTE, RunRequest(now=end))
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)
        # Then: main untouched, both branches readable, and once there is space again the next
        # run is correct
        assert snapshots.main_snapshot_id(spark, table) == main
        spark.read.table(table).count()
        spark.read.option("branch", wap.AUDIT_BRANCH).table(table).count()
        pipeline.run_pipeline(spark, own, ONE_MINUTE, RunRequest(now=end))
        _consistent(spark, tables, trades)
        close(spark)
    finally:
        stack.down(own)
    print(f"kill -9 of the server -> the run failed after: {exits}")
    assert exits and max(exits.values()) < own.connect_retry_s + 30, exits


KILL_TRIES = int(os.environ.get("KILL_TRIES", "1"))
"""Kills per point in the suite. Each kill lands while the command's query runs on the server
(its plan is seen running in the server's monitoring API), so every try takes the path that
hung: a reattachable execution in flight, its releases pending; one try a point exercises it
deterministically. ``KILL_TRIES=30`` for the repeated measurement (docs/operations.md)."""

WRITE_NODES = {"ReplaceData", "WriteDelta", "AppendData", "OverwriteByExpression", "MergeRows"}
OHLCV = str(Path(sys.executable).with_name("ohlcv"))  # the installed command, as users run it


class _Queries:
    """What runs on a server, from its monitoring API (cheap enough to poll every 50 ms: only
    executions newer than those already seen are fetched with their plans)."""

    def __init__(self, settings: Settings) -> None:
        self.base = f"http://127.0.0.1:{settings.ui_port}/api/v1/applications"
        self.seen = 0

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.base}{path}", timeout=5) as response:
            return json.load(response)

    def running(self, nodes: set[str]) -> bool:
        """Whether a query runs whose plan has one of ``nodes`` (any query: ``nodes`` empty)."""
        try:
            app = self._get("")[0]["id"]
            if not nodes:
                return bool(self._get(f"/{app}/jobs?status=running"))
            executions = self._get(f"/{app}/sql?details=true&offset={self.seen}&length=1000")
        except (TimeoutError, urllib.error.URLError):
            return False
        done = [e for e in executions if e["status"] != "RUNNING"]
        running = [e for e in executions if e["status"] == "RUNNING"]
        if not running:  # (never skip past a running one)
            self.seen += len(done)
        return any(nodes & {n["nodeName"] for n in e.get("nodes", [])} for e in running)


def _kill_when(
    child: subprocess.Popen[str], out: Path, settings: Settings, after: str, nodes: set[str]
) -> float | None:
    """Kill -9 the server once the child has written ``after`` to ``out`` and a query with one
    of ``nodes`` (any query if empty) runs on it; the time of the kill, or None when the child
    ended first."""
    queries = _Queries(settings)
    while child.poll() is None:
        if after in out.read_text(errors="replace") and queries.running(nodes):
            pid = stack.status(settings).pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            return time.monotonic()
        time.sleep(0.05)
    return None


def _one_line_within_30_s(child: subprocess.Popen[str], killed: float, what: str) -> None:
    try:
        _, stderr = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        raise AssertionError(f"{what}: still running 60 s after the server was killed") from None
    took = time.monotonic() - killed
    print(f"{what}: ended {took:.1f} s after the kill", flush=True)  # seen with -s
    assert took <= 30, f"{what}: ended {took:.1f} s after the kill"
    assert child.returncode == 1, f"{what}: exit {child.returncode}: {stderr}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, f"{what}: {stderr}"


@pytest.mark.spark  # starts a server of its own, to kill it
@pytest.mark.parametrize("point", ["backfill mid-chunk", "run mid-MERGE", "candles --live"])
def test_a_command_whose_server_is_killed_mid_query_ends_in_one_line_and_the_rerun_recovers(
    point: str, tmp_path: Path, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: the CLI with its default budgets, a server of its own and two days of trades
    own = _own_server(tmp_path, port(15020), port(14060))
    export_settings(monkeypatch, own)
    # (unbuffered: the test reads the command's progress while it runs)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONUNBUFFERED": "1"}
    stack.up(own)
    catalog = open_catalog(own)
    ensure_tables(catalog, own.namespace)
    tables = tables_for(own)
    rng = random.Random(26)
    end = START + timedelta(days=2)
    trades = random_trades(rng, START, end, 20_000, first_id=1)
    deliver(catalog, tables, trades, now=end)
    span = ["--start", START.isoformat(), "--end", end.isoformat()]
    backfill = [OHLCV, "backfill", "1m", *span, "--chunk", "12h"]  # four chunks
    backfill_ = "backfill mid-chunk"
    if point == "run mid-MERGE":
        assert subprocess.run(backfill, env=env, capture_output=True).returncode == 0
    try:
        for n in range(KILL_TRIES):
            if point == backfill_:
                command, nodes = [*backfill, "--restart"], set()
            elif point == "run mid-MERGE":  # late trades in every window: a MERGE with work
                late = random_trades(rng, START, end, 5_000, first_id=100_000 * (n + 1))
                deliver(catalog, tables, late, now=end)
                trades += late
                command = [OHLCV, "run", "1m", "--at", end.isoformat(), "--lookback", "48h"]
                nodes = WRITE_NODES
            else:
                command = [OHLCV, "candles", *SYMBOLS, "--live", *span, "--output", "/dev/null"]
                nodes = set()
            stack.up(own)
            out = tmp_path / f"try-{n}.out"
            with out.open("w") as stdout:
                child = subprocess.Popen(
                    command, cwd=tmp_path, env=env, text=True, stdout=stdout, stderr=subprocess.PIPE
                )
            # When: the server is killed while the command's query runs (a backfill's after
            # its first chunk, inside a later one)
            after = "inserted" if point == backfill_ else ""
            killed = _kill_when(child, out, own, after, nodes)
            assert killed is not None, f"{point}: ended before the kill: {child.communicate()}"
            # Then: it ends within 30 s, in one line
            _one_line_within_30_s(child, killed, f"{point}, try {n + 1}")
        # And the same command, once the server is back, leaves every candle right
        stack.up(own)
        if point != "candles --live":
            rerun = backfill if point == backfill_ else command
            done = subprocess.run(rerun, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            spark = connect(own)
            try:
                _consistent(spark, tables, trades)
            finally:
                close(spark)
    finally:
        stack.down(own)


HOLDER = """
import time
from flows.writers import one_writer
from settings import Settings

with one_writer(Settings(), "ohlcv_1m"):
    print("holding", flush=True)
    time.sleep(600)
"""
"""A writer that takes the 1m table's slot and keeps it (its lease renewed) until killed."""


@pytest.mark.stack  # the local Prefect server of `ohlcv stack up`, killed and started again
def test_a_writer_slot_taken_when_the_prefect_server_dies_is_free_after_its_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: the stack's own Prefect server, and a writer holding the 1m table's slot
    own = Settings(data_dir=tmp_path, prefect_port=port(14215), writer_wait_s=150)
    export_settings(monkeypatch, own)
    local_prefect.up(own)
    url = local_prefect.local_url(own)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": url},
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"holding"
        # When: the Prefect server and the writer are killed with -9, and the server restarts
        pid = local_prefect.status(own).pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        holder.kill()
        holder.wait(30)
        local_prefect.up(own)
        # Then: the next writer gets the slot once the dead writer's lease has run out
        started = time.monotonic()
        with prefect_api(url), one_writer(own, "ohlcv_1m"):
            waited = time.monotonic() - started
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()
        local_prefect.down(own)
    # (the lease, plus the server's look for expired leases every 15 s, plus a loaded machine)
    assert waited < own.writer_lease_s + 60, waited
