"""The local stack: idempotent start, clean stop, clear errors. Real processes, no mocks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra import stack
from infra.artifacts import Artifact, ArtifactError, ensure_artifacts
from infra.session import ConnectError, connect
from settings import Settings


def test_up_reuses_the_running_server(server: stack.StackStatus, settings: Settings) -> None:
    again = stack.up(settings)
    assert again.running and again.pid == server.pid
    assert stack.status(settings).running


def test_another_stack_on_a_taken_port_is_refused(
    server: stack.StackStatus, settings: Settings, tmp_path: Path
) -> None:
    other = Settings(data_dir=tmp_path, connect_port=settings.connect_port, spark_remote=None)
    with pytest.raises(stack.StackError, match=f"port {settings.connect_port}.*OHLCV_CONNECT_PORT"):
        stack.up(other)


def test_no_server_gives_one_clear_error(tmp_path: Path) -> None:
    nobody = Settings(data_dir=tmp_path, connect_port=15999, spark_remote=None)
    with pytest.raises(ConnectError, match=r"sc://localhost:15999: run `ohlcv stack up`"):
        connect(nobody)


def test_token_never_appears_in_connect_errors(tmp_path: Path) -> None:
    remote = Settings(data_dir=tmp_path, spark_remote="sc://localhost:15998/;token=s3cret")
    with pytest.raises(ConnectError) as failure:
        connect(remote)
    assert "s3cret" not in str(failure.value)


@pytest.mark.spark  # starts a server of its own
def test_up_and_down_a_second_server(tmp_path: Path) -> None:
    # Given a stack of its own (other data dir and port)
    own = Settings(data_dir=tmp_path, connect_port=15013, spark_remote=None, driver_memory="1g")
    started = stack.up(own)
    try:
        assert started.running and stack.port_open("127.0.0.1", 15013)
        spark = connect(own)
        assert spark.sql("SELECT 1 AS one").collect()[0]["one"] == 1
        spark.stop()
    finally:
        # When it is stopped
        stopped = stack.down(own)
    # Then the process is gone, the port is free and the status says so
    assert not stopped.running
    assert not stack.port_open("127.0.0.1", 15013)
    assert "stopped" in stack.status(own).describe()
    # and stopping again is a no-op
    assert not stack.down(own).running


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
