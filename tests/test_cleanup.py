"""An interrupted test suite stops the servers it started, and a port held by a stale server is
named in one line. Real pytest processes, real signals, a real Spark Connect server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.net import port_open
from tests.support import cleanup
from tests.support.ports import port

ROOT = Path(__file__).resolve().parent.parent

TINY_SUITE = """
import threading
import time

import pytest

from settings import Settings
from tests.support import ports, stacks


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("tiny"),
        connect_port=ports.port(15019),
        ui_port=ports.port(14059),
        driver_memory="512m",
        local_cores=1,
        spark_remote=None,
    )
    with stacks.running(settings, "the tiny suite") as local:
        yield local.up()


def test_runs_until_stopped(server):
    helper = threading.Thread(target=time.sleep, args=(900,), daemon=True)  # (a library's)
    helper.start()
    print(f"server pid {server.pid} helper thread {helper.native_id}", flush=True)
    time.sleep(900)
"""


def _pytest(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]


@pytest.fixture
def tiny_suite(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """A pytest process running a suite whose one test holds a real Spark Connect server;
    yields it, the server's pid and the thread id of a helper thread once the server runs."""
    (tmp_path / "test_tiny.py").write_text(TINY_SUITE)
    args = ["-p", "tests.support.cleanup", "-s", f"--basetemp={tmp_path}/base", "test_tiny.py"]
    with subprocess.Popen(
        _pytest(args),
        cwd=tmp_path,  # (its rootdir: none of this repository's pytest settings)
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # our signal reaches pytest alone, as a CI runner's would
    ) as child:
        try:
            assert child.stdout is not None
            seen = []
            for line in child.stdout:
                seen.append(line)
                if "server pid " in line:  # (after pytest's progress, on the same line)
                    words = line.split("server pid ")[1].split()
                    yield child, int(words[0]), int(words[3])
                    break
            else:
                pytest.fail("the tiny suite ended before its server ran:\n" + "".join(seen[-30:]))
        finally:
            if child.poll() is None:
                child.kill()


def _gone_within(pid: int, started: int, listening: int, seconds: float) -> float:
    """Seconds until ``pid`` has ended and nothing listens on port ``listening`` any more."""
    began = time.monotonic()
    while cleanup.same_process(pid, started) or port_open("127.0.0.1", listening):
        assert time.monotonic() - began < seconds, f"pid {pid} still runs after {seconds} s"
        time.sleep(0.2)
    return time.monotonic() - began


@pytest.mark.spark
@pytest.mark.stack  # the tiny suite starts a Spark Connect server of its own
@pytest.mark.parametrize(
    ("signum", "on_helper"),
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGKILL, False)],
    ids=["SIGTERM", "SIGTERM taken by another thread", "kill-9"],
)
def test_an_interrupted_suite_stops_the_server_it_started(
    signum: int, on_helper: bool, tiny_suite: tuple[subprocess.Popen[str], int, int]
) -> None:
    child, server, helper = tiny_suite
    started = cleanup.start_time(server)
    assert started is not None and port_open("127.0.0.1", port(15019))
    run_dir = cleanup.REGISTRY / str(child.pid)
    assert (run_dir / str(server)).exists(), "the watcher did not record the server"

    # When: pytest is stopped by a CI time limit (SIGTERM) or killed outright (kill -9); a
    # SIGTERM the kernel hands to a thread other than the main one, blocked in a long call, is
    # what one landing just before that call is (kill(2) with a thread's id prefers that thread)
    os.kill(helper if on_helper else child.pid, signum)

    # Then: the server is gone within seconds, its port is free, nothing is left recorded
    took = _gone_within(server, started, port(15019), 40)
    print(f"{signal.Signals(signum).name}: the server was gone {took:.1f} s after the signal")
    child.wait(60)
    deadline = time.monotonic() + 30
    while run_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not run_dir.exists()
    if signum == signal.SIGTERM:  # pytest's own teardown stopped it, and pytest said why
        output = child.stdout.read() if child.stdout else ""
        assert child.returncode == pytest.ExitCode.INTERRUPTED, output
        assert "KeyboardInterrupt" in output, output


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two processes in sessions of their own, as the servers run."""
    procs = [subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(2)]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(10)


def _record(run: Path, owner: tuple[int, int], *processes: subprocess.Popen[bytes]) -> None:
    run.mkdir(parents=True)
    (run / "owner.json").write_text(json.dumps({"pid": owner[0], "start": owner[1]}))
    for proc in processes:
        (run / str(proc.pid)).write_text(f"{cleanup.start_time(proc.pid)} {proc.pid}")


def test_what_a_killed_run_left_is_swept_at_the_next_start_and_a_live_run_is_not(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    # Given: a run whose pytest and watcher were both killed, leaving a process behind, and a
    # run still going (its pytest is this one)
    left, ours = sleepers
    _record(tmp_path / "dead", (99_999_999, 1), left)  # (no such pid)
    _record(tmp_path / "live", (os.getpid(), cleanup.start_time(os.getpid()) or 0), ours)
    # When: the next run starts
    stopped = cleanup.sweep(tmp_path)
    # Then: what the dead run left is stopped and forgotten; the live run is left alone
    assert stopped == [left.pid]
    assert left.wait(15) == -signal.SIGTERM
    assert not (tmp_path / "dead").exists()
    assert ours.poll() is None and (tmp_path / "live").exists()


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_port_held_by_another_process_ends_the_session_in_one_line(held_port: int) -> None:
    # Given: the session server's port (15012 + TEST_PORT_OFFSET) held by this process
    offset = held_port - 15012
    # (the suite started here is no xdist worker, whatever this test runs in)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OHLCV_", "PYTEST_XDIST"))}
    # When: a suite that needs the session's server starts
    done = subprocess.run(
        _pytest(["-q", "tests/test_stack.py::test_up_reuses_the_running_server"]),
        cwd=ROOT,
        env={**env, "TEST_PORT_OFFSET": str(offset)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Then: it ends at once, in one line naming the port, its holder and what to do
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if str(held_port) in line]
    assert len(lines) == 1, done.stdout + done.stderr
    assert f"pid {os.getpid()}" in lines[0] and "TEST_PORT_OFFSET" in lines[0], lines[0]
    assert "ERROR" not in done.stdout, done.stdout
