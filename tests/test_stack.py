"""The local stack: idempotent start, clean stop, clear errors. Real processes, no mocks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql.connect.client.reattach import ExecutePlanResponseReattachableIterator
from pyspark.sql.connect.session import SparkSession as ConnectSession

from core.tables import Tables
from infra import net, processes, spark_server, stack
from infra.artifacts import Artifact, ArtifactError, ensure_artifacts
from infra.session import ConnectError, close, connect
from settings import Settings
from tests.support.environment import SESSION_JAVA_OPTIONS, SHORT_LIVED_JAVA_OPTIONS
from tests.support.ports import port

ROOT = Path(__file__).resolve().parent.parent


def test_up_reuses_the_running_server(server: stack.StackStatus, settings: Settings) -> None:
    again = stack.up(settings)
    assert again.running and again.pid == server.pid
    assert stack.status(settings).running


def test_the_server_runs_with_the_extra_java_options(
    server: stack.StackStatus, settings: Settings
) -> None:
    # (the suite's own: tests/support/environment.py)
    assert Settings().server_java_options == SHORT_LIVED_JAVA_OPTIONS
    assert settings.server_java_options == SESSION_JAVA_OPTIONS
    assert server.pid is not None
    argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode().split("\0")
    assert "-XX:+UseSerialGC" in argv and "-XX:TieredStopAtLevel=1" not in argv, argv
    cluster = Settings(workers=2)
    conf = spark_server.server_conf(cluster)
    assert conf["spark.executor.extraJavaOptions"] == SHORT_LIVED_JAVA_OPTIONS


def test_a_collected_session_never_waits_for_the_releases_of_the_others(
    server: stack.StackStatus, settings: Settings
) -> None:
    # Given: a session in use, with a release in the pool every session shares that cannot
    # finish yet; a session closed, and one left open
    live, closed, left_open = connect(settings), connect(settings), connect(settings)
    close(closed)
    held = threading.Event()
    try:
        assert live.range(3).collect()
        releases = ExecutePlanResponseReattachableIterator
        pool = releases._get_or_create_release_thread_pool()
        pool.submit(held.wait, 60)
        # When: their finalizers run (the garbage collector runs them on any thread, gRPC's own
        # included: waiting there for the releases hung every call of the process)
        finalize: Any = ConnectSession.__del__  # (what the collector calls)
        finalizers = threading.Thread(target=lambda: (finalize(closed), finalize(left_open)))
        finalizers.start()
        finalizers.join(5)
        # Then: they return at once, the shared pool stays in use, the live session works
        assert not finalizers.is_alive(), "a finalizer waited for the shared releases"
        assert releases._release_thread_pool_instance is pool
        assert live.range(4).count() == 4
        # and the session left open has its channel closed
        deadline = time.monotonic() + 10
        while not _refused(left_open):
            assert time.monotonic() < deadline, "the finalized session's channel is still open"
            time.sleep(0.1)
    finally:
        held.set()
        close(live)


def _refused(spark: SparkSession) -> bool:
    try:
        spark.range(1).collect()
    except ValueError:  # (gRPC: "Cannot invoke RPC on closed channel!")
        return True
    return False


def test_another_stack_on_a_taken_port_is_refused(
    server: stack.StackStatus, settings: Settings, tmp_path: Path
) -> None:
    other = Settings(data_dir=tmp_path, connect_port=settings.connect_port, spark_remote=None)
    with pytest.raises(stack.StackError, match=f"port {settings.connect_port}.*OHLCV_CONNECT_PORT"):
        stack.up(other)


def test_no_server_gives_one_clear_error(tmp_path: Path) -> None:
    nobody = Settings(data_dir=tmp_path, connect_port=port(15999), spark_remote=None)
    with pytest.raises(ConnectError, match=rf"sc://localhost:{port(15999)}: run `ohlcv stack up`"):
        connect(nobody)


def test_token_never_appears_in_connect_errors(tmp_path: Path) -> None:
    remote = Settings(data_dir=tmp_path, spark_remote=f"sc://localhost:{port(15998)}/;token=s3cret")
    with pytest.raises(ConnectError) as failure:
        connect(remote)
    assert "s3cret" not in str(failure.value)


def test_a_token_to_an_address_without_tls_is_refused_at_once(tmp_path: Path) -> None:
    # The local server listens on 127.0.0.1: the client would try TLS there for minutes
    remote = "sc://127.0.0.1:15002/;token=s3cret"
    with pytest.raises(ConnectError, match=r"only over TLS.*sc://localhost:15002/") as failure:
        connect(Settings(data_dir=tmp_path, spark_remote=remote))
    assert "s3cret" not in str(failure.value)


def _ohlcv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in a process of its own (no PREFECT_API_URL of the tests)."""
    return subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.spark
@pytest.mark.stack  # starts a stack of its own (Spark Connect and Prefect)
def test_stack_up_serves_flow_runs_through_its_own_prefect_server_and_down_stops_both(
    tmp_path: Path,
) -> None:
    # Given: a stack of its own (other data dir and ports), no PREFECT_API_URL
    connect_port, ui_port, prefect_port = port(15013), port(14063), port(14213)
    own = Settings(
        data_dir=tmp_path, connect_port=connect_port, prefect_port=prefect_port, spark_remote=None
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OHLCV_"))}
    env |= {
        "OHLCV_DATA_DIR": str(tmp_path),
        "OHLCV_CONNECT_PORT": str(connect_port),
        "OHLCV_UI_PORT": str(ui_port),
        "OHLCV_PREFECT_PORT": str(prefect_port),
        "OHLCV_DRIVER_MEMORY": "1g",
        "OHLCV_GX_DIR": str(tmp_path / "gx"),
    }
    try:
        # When: it is started and a run goes through the CLI
        up = _ohlcv(env, "stack", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Prefect running" in up.stdout and f"http://127.0.0.1:{prefect_port}" in up.stdout
        assert _ohlcv(env, "demo-data", "--hours", "1").returncode == 0
        run = _ohlcv(env, "run", "1m")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "published snapshot" in run.stdout
        # the terminal gets the CLI's summary; Prefect's run log lines go to its server only
        assert "Beginning flow run" not in run.stdout + run.stderr
        assert "Finished in state" not in run.stdout + run.stderr
        # Then: the flow run is recorded by the stack's own Prefect server (it outlives the
        # command), with its database in the data directory
        request = urllib.request.Request(
            f"http://127.0.0.1:{prefect_port}/api/flow_runs/filter",
            data=json.dumps({"limit": 10}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            runs = json.load(response)
        assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
        assert any((tmp_path / "prefect").glob("*.db"))
        logs = urllib.request.Request(
            f"http://127.0.0.1:{prefect_port}/api/logs/filter",
            data=json.dumps({"limit": 200}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(logs, timeout=30) as response:
            messages = [entry["message"] for entry in json.load(response)]
        assert any("Beginning flow run" in m for m in messages), messages
        # and the server deletes runs past the retention by itself (months of runs)
        admin = f"http://127.0.0.1:{prefect_port}/api/admin/settings"
        with urllib.request.urlopen(admin) as response:
            vacuum = json.load(response)["server"]["services"]["db_vacuum"]
        assert "flow_runs" in vacuum["enabled"], vacuum
        days = Settings.model_fields["prefect_retention_days"].default
        assert vacuum["retention_period"] == f"P{days:g}D", vacuum
        status = _ohlcv(env, "stack", "status")
        assert "Spark Connect running" in status.stdout and "Prefect running" in status.stdout
    finally:
        down = _ohlcv(env, "stack", "down")
    # And: stopping stops both; the ports are free; stopping again is a no-op
    assert down.returncode == 0, down.stdout + down.stderr
    assert not net.port_open("127.0.0.1", connect_port) and not net.port_open(
        "127.0.0.1", prefect_port
    )
    assert "stopped" in stack.status(own).describe()
    again = _ohlcv(env, "stack", "down")
    assert again.returncode == 0 and again.stdout.count("stopped") == 2
    # And: with the stack down, a run fails at once in one line saying what to do
    run = _ohlcv(env, "run", "1m")
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and "ohlcv stack up" in run.stderr, run.stderr


@pytest.mark.jvm  # Spark's resolver runs in a JVM
def test_an_artifact_that_cannot_be_fetched_is_named(tmp_path: Path) -> None:
    missing = Artifact("org.example.ohlcv", "no-such-artifact", "0.0.1", "0" * 64)
    with pytest.raises(ArtifactError, match=re.escape("org.example.ohlcv:no-such-artifact:0.0.1")):
        ensure_artifacts(tmp_path, (missing,))


@pytest.mark.parametrize("suffix", ["", "/;token=not-the-token"])
def test_a_client_without_the_right_token_is_refused(
    server: stack.StackStatus, settings: Settings, suffix: str
) -> None:
    token = settings.local_token()
    assert token, "the local server always requires a token"
    intruder = Settings(spark_remote=f"sc://localhost:{settings.connect_port}{suffix}")
    with pytest.raises(ConnectError, match="refused the session: missing or wrong token") as e:
        connect(intruder)
    assert token not in str(e.value)


def test_the_server_logs_warnings_not_every_job(
    server: stack.StackStatus, spark: SparkSession, settings: Settings, tables: Tables
) -> None:
    spark.sql("SELECT 1").collect()
    spark.sql(
        f"CALL `{tables.catalog}`.system.rewrite_manifests(table => :table)",
        args={"table": tables.trades},  # as maintenance and publish call procedures
    ).collect()
    log = settings.stack_dir.joinpath("server.log").read_text(errors="replace")
    assert " INFO " not in log, "Spark's INFO lines fill gigabytes over months of runs"
    assert "CatalogNotFoundException" not in log, "a procedure call logged a stack trace"


def test_a_long_log_is_rotated_before_a_server_starts(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    processes.rotate_log(log, max_bytes=10)  # no log yet: nothing to do
    log.write_text("short")
    processes.rotate_log(log, max_bytes=10)
    assert log.read_text() == "short"
    log.write_text("x" * 11)
    processes.rotate_log(log, max_bytes=10)
    assert not log.exists() and log.with_name("server.log.1").read_text() == "x" * 11


def test_the_token_stays_out_of_logs_process_lists_and_status(
    server: stack.StackStatus, settings: Settings
) -> None:
    token = settings.local_token()
    assert token and token in settings.remote  # the client sends it ...
    assert settings.token_file.stat().st_mode & 0o077 == 0  # ... from a private file
    assert token not in server.describe()
    assert token not in settings.stack_dir.joinpath("server.log").read_text(errors="replace")
    assert server.pid is not None
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode(errors="replace")
    assert token not in cmdline


def test_a_pid_file_whose_pid_now_names_another_process_is_a_stopped_server(
    tmp_path: Path,
) -> None:
    # Given: a pid file of the Prefect server whose process died, its pid since taken by
    # another process (pids are reused: a busy machine cycles through 32,768 in minutes)
    from infra import prefect_server

    own = Settings(data_dir=tmp_path, spark_remote=None)
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        started = processes.start_time(other.pid)
        assert started is not None
        own.stack_dir.mkdir(parents=True)
        record = {"pid": other.pid, "port": 1, "start": started - 1}
        prefect_server.SERVER.pid_file(own).write_text(json.dumps(record))
        # When: the stack is asked about it and stopped
        status = prefect_server.status(own)
        prefect_server.down(own)
        # Then: the server counts as stopped, and the other process was not signalled
        assert not status.running and status.pid is None
        assert other.poll() is None and processes.alive(other.pid, started)
        # And: the same pid file naming the process as it is (its start time) is its server
        prefect_server.SERVER.pid_file(own).write_text(json.dumps({**record, "start": started}))
        assert prefect_server.status(own).pid == other.pid
    finally:
        other.kill()
        other.wait(10)


def test_a_server_found_dying_is_replaced_not_reported_as_a_failed_start(tmp_path: Path) -> None:
    # Given: a recorded server that is still running but on its way out (as one killed with -9
    # a moment ago can be: a large process takes a while to exit), not yet answering
    from infra.local_servers import Launch, LocalServer

    toy = LocalServer(name="toy", title="toy server", port_variable="TOY_PORT")
    own = Settings(data_dir=tmp_path, spark_remote=None, server_start_timeout_s=60)
    listen = port(15035)
    dying = Launch([sys.executable, "-c", "import time; time.sleep(2)"])
    first = toy.start(own, listen, lambda: dying, lambda: True)
    serving = Launch([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(listen)])
    try:
        # When: the server is started again while that one exits
        second = toy.start(own, listen, lambda: serving, lambda: net.port_open("127.0.0.1", listen))
        # Then: a new server replaces it, rather than "exited during start-up"
        assert second != first and toy.running_pid(own) == second
        assert not processes.alive(first)
    finally:
        toy.stop(own)
    assert toy.running_pid(own) is None and not net.port_open("127.0.0.1", listen)
