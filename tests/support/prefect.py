"""Prefect in the tests: the session's test harness, a real server with services, and pointing
flow runs at a server of a test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from settings import quiet_third_parties


@contextmanager
def harness() -> Iterator[None]:
    """One Prefect test server (it takes ~9 s to start), drained with a timeout at the end."""
    quiet_third_parties()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
        # The harness drains Prefect's workers with no timeout: drain them first with one, so
        # a worker stuck on a dead server fails here instead of hanging the session's end.
        drain_prefect_workers()


def drain_prefect_workers(timeout_s: float = 60) -> None:
    """Stop Prefect's event and log workers (client-side queue services) once they have sent
    what they hold, and forget them.

    They are process-wide singletons bound, when first used, to the API of that moment, and the
    event worker's key does not include the URL: left running, a worker bound to a server a test
    has since stopped would serve later flow runs and hang the harness's teardown, which drains
    them without a timeout. The next use starts fresh ones on the current API.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        # (in sync code drain_all waits and returns (done, not done); a stopped service has
        # already left the registry, so a timeout cannot leave it to the next test)
        _, pending = cast(Any, service.drain_all(timeout=timeout_s, at_exit=False))
        assert not pending, f"Prefect's {service.__name__} did not drain within {timeout_s} s"


@contextmanager
def prefect_api(url: str) -> Iterator[None]:
    """Flow runs in this block use the Prefect API at ``url`` (a server of the test's own).

    Prefect's workers are drained on the way in (the ones bound to the API before must not carry
    this block's events) and on the way out, while ``url``'s server still runs (it may be
    stopped right after).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    drain_prefect_workers()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        drain_prefect_workers()


@contextmanager
def running_prefect_server(home: Path, port: int) -> Iterator[str]:
    """A real Prefect server with its services (the test harness's ephemeral server runs none,
    so it never takes back the slot of a dead lease holder). Yields its API URL."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        # Look for expired leases every second instead of every 15.
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
    }
    env.pop("PREFECT_API_URL", None)
    command = ["server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (home / "server.log").read_text()
                assert time.monotonic() < deadline, "the Prefect server did not start"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
