"""An expected failure of any command prints its one line, never a traceback (issue 26).

Each command runs as a user runs it: the installed ``ohlcv`` in a process of its own, against
real servers (or none). A failed flow run's traceback belongs in its logs on the Prefect server,
which is checked through Prefect's API.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.tables import ensure_tables
from infra.catalog import open_catalog
from infra.stack import StackStatus
from settings import Settings
from tests.support.ports import port

OHLCV = str(Path(sys.executable).with_name("ohlcv"))
MAX_LINES = 3


def _ohlcv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OHLCV_", "PREFECT_"))}
    return subprocess.run(
        [OHLCV, *args],
        env={**base, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _quiet_failure(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The output of a command that failed as expected: exit code 1, no traceback, a few
    lines. Returns them."""
    both = done.stdout + done.stderr
    lines = both.strip().splitlines()
    assert done.returncode == 1, both
    assert "Traceback" not in both, both
    assert 1 <= len(lines) <= MAX_LINES, both
    return lines


@pytest.fixture
def stack_down(tmp_path: Path) -> dict[str, str]:
    """Settings of a stack that is not running: a fresh data dir, ports nobody listens on."""
    return {
        "OHLCV_DATA_DIR": str(tmp_path / "data"),
        "OHLCV_CONNECT_PORT": str(port(15991)),
        "OHLCV_UI_PORT": str(port(14991)),
        "OHLCV_PREFECT_PORT": str(port(4991)),
    }


@pytest.mark.parametrize(
    "args",
    [
        ["run", "1m"],
        ["backfill", "1m", "--start", "2026-03-01", "--end", "2026-03-02"],
        ["maintain"],
        ["candles", "BTC-USD", "--live"],
        ["serve"],
        ["status"],
    ],
    ids=lambda args: args[0] + ("-live" if "--live" in args else ""),
)
def test_a_command_against_a_stack_that_is_down_prints_one_line(
    args: list[str], stack_down: dict[str, str]
) -> None:
    (line,) = _quiet_failure(_ohlcv(stack_down, *args))
    connect_port = stack_down["OHLCV_CONNECT_PORT"]
    assert f"no Spark Connect server reachable at sc://localhost:{connect_port}" in line


def test_reading_candles_of_tables_that_do_not_exist_prints_one_line(
    stack_down: dict[str, str],
) -> None:
    (line,) = _quiet_failure(_ohlcv(stack_down, "candles", "BTC-USD"))
    assert "no table market.ohlcv_1m" in line


def test_ingesting_a_file_that_is_not_trades_prints_one_line(
    stack_down: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("not,a,trades,file\n1,2,3,4\n")
    (line,) = _quiet_failure(_ohlcv(stack_down, "ingest", str(bad)))
    assert "missing required column 'exchange'" in line


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process (this one) listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_demo_whose_server_cannot_start_prints_one_line(
    stack_down: dict[str, str], taken_port: int
) -> None:
    env = {**stack_down, "OHLCV_CONNECT_PORT": str(taken_port)}
    (line,) = _quiet_failure(_ohlcv(env, "demo", "--hours", "1"))
    assert f"port {taken_port} on 127.0.0.1 is used by another process" in line
    assert "OHLCV_CONNECT_PORT" in line


def test_a_failed_flow_run_prints_one_line_and_keeps_its_traceback_on_the_server(
    prefect: None, server: StackStatus, settings: Settings
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL

    # Given: the session's servers and a namespace without tables (the run fails in its flow)
    missing = f"missing_{uuid.uuid4().hex[:8]}"
    env = {
        "OHLCV_DATA_DIR": str(settings.data_dir),
        "OHLCV_CONNECT_PORT": str(settings.connect_port),
        "OHLCV_UI_PORT": str(settings.ui_port),
        "OHLCV_NAMESPACE": missing,
        "OHLCV_GENERATE_RETRY_DELAY_S": "0",
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    # When: a scheduled-style run starts
    done = _ohlcv(env, "run", "1m")
    # Then: the console has the CLI's one line, none of Prefect's or pyspark's log lines
    (line,) = _quiet_failure(done)
    assert line.startswith("Spark error: [TABLE_OR_VIEW_NOT_FOUND]") and missing in line
    # and the flow run's logs on the Prefect server hold the traceback
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED]))
            ),
            sort=FlowRunSort.START_TIME_DESC,
            limit=5,
        )
        logs = [
            log.message
            for run in runs
            for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            )
        ]
    ours = [m for m in logs if missing in m]
    assert any("Traceback" in m for m in ours), logs

    # And: once the tables exist, a run that succeeds prints its summary line and nothing of
    # Prefect's (flow and task runs starting and finishing are in the run's logs only)
    ensure_tables(open_catalog(settings), missing)
    done = _ohlcv(env, "run", "1m")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines() == [done.stdout.strip()], done.stdout
    assert done.stdout.startswith("1m: read 0 trades") and not done.stderr.strip(), done
