"""Expected failures end as one line that says what to do, never as a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cli.main import app
from infra.stack import StackStatus
from ingest.demo import demo_trades, write_demo_file
from settings import Settings
from tests.support.environment import export_settings
from tests.support.ports import port
from tests.support.prefect import prefect_api

ROOT = Path(__file__).resolve().parent.parent
END = datetime(2026, 3, 2, tzinfo=UTC)


def _demo_file(path: Path, hours: float = 6) -> Path:
    table = demo_trades(start=END - timedelta(hours=hours), end=END, trades_per_minute=50)
    return write_demo_file(path, table)


def test_a_damaged_parquet_file_is_one_line_naming_it(tmp_path: Path) -> None:
    good = tmp_path / "trades.parquet"
    table = demo_trades(start=END - timedelta(hours=6), end=END, trades_per_minute=50)
    pq.write_table(table, good, compression="snappy")
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)  # damage in the middle, not the footer
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(bytes(data))

    result = CliRunner().invoke(
        app, ["ingest", str(damaged)], env={"OHLCV_DATA_DIR": str(tmp_path / "data")}
    )

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert str(damaged) in lines[0]


# What a full disk looks like to a writer: writes past 256 KiB fail (EFBIG), and the signal
# that would kill the process instead is ignored, as on a real disk error. The child sets this
# itself: a preexec_fn runs Python in the forked child of this process, whose gRPC threads
# (the session's Connect client) then logged an epoll error to the child's stderr.
_SMALL_FILES_ONLY = (
    "import resource, signal; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024)); "
)


def test_a_write_that_fails_for_lack_of_space_is_one_line(tmp_path: Path) -> None:
    trades = _demo_file(tmp_path / "trades.parquet", hours=24)
    assert trades.stat().st_size > 256 * 1024  # its data file cannot be written
    command = f"{_SMALL_FILES_ONLY}from cli.main import app; app()"
    done = subprocess.run(
        [sys.executable, "-c", command, "ingest", str(trades)],
        cwd=ROOT,
        env={**os.environ, "OHLCV_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "File too large" in lines[0]


def test_a_run_without_a_server_fails_in_one_line_before_any_flow_run(tmp_path: Path) -> None:
    nobody = port(15997)
    env = {"OHLCV_DATA_DIR": str(tmp_path / "data"), "OHLCV_CONNECT_PORT": str(nobody)}
    result = CliRunner().invoke(app, ["run", "1m"], env=env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"no Spark Connect server reachable at sc://localhost:{nobody}" in lines[0]


def test_a_run_without_its_prefect_server_fails_in_one_line(
    server: StackStatus, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_settings(monkeypatch, settings)
    with prefect_api("http://127.0.0.1:9/api"):
        result = CliRunner().invoke(app, ["maintain", "--table", "trades"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "no Prefect server answers at PREFECT_API_URL=http://127.0.0.1:9/api" in lines[0]


STUCK = """
import signal, time
from flows import stopping
stopping.STOP_GRACE_S = 2.0
signal.signal(signal.SIGINT, lambda *args: None)  # a graceful path that never ends
with stopping.ends_within_grace():
    print("ready", flush=True)
    time.sleep(120)
"""


def test_a_stopping_run_whose_graceful_exit_hangs_still_ends() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", STUCK], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
            child.send_signal(signal.SIGINT)
            _, stderr = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == 128 + signal.SIGINT
    assert b"did not end within 2 s" in stderr
