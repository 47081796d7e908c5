"""The local Prefect server of the embedded stack: loopback only, its database in the data dir.

Flow runs need a Prefect API. Without ``PREFECT_API_URL`` Prefect would start a temporary
server inside each command: slow to start on a busy machine (it misses its own start-up
timeout), and its runs vanish with it. So ``ohlcv stack up`` starts one long-lived server per
data directory, like the Spark Connect server, and every command that runs a flow talks to it
(:func:`api_url`). A ``PREFECT_API_URL`` of the user's own (Prefect Cloud, a shared server)
always wins: then no local server is started.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.local_servers import HOST, Launch, LocalServer
from infra.processes import StackError
from settings import Settings


class PrefectUnavailable(StackError):
    """No Prefect API to run flows against."""


SERVER = LocalServer(
    "prefect",
    "local Prefect server",
    "OHLCV_PREFECT_PORT",
    error=PrefectUnavailable,
    timeout_setting="prefect_start_timeout_s",
    port_hint=", or point PREFECT_API_URL at the Prefect server that runs there",
)


@dataclass(frozen=True)
class PrefectStatus:
    running: bool
    pid: int | None
    url: str
    log_file: Path

    def describe(self) -> str:
        ui = self.url.removesuffix("/api")
        if self.running:
            return f"running (pid {self.pid}) at {ui} (API {self.url}); log: {self.log_file}"
        return f"stopped; log: {self.log_file}"


def local_url(settings: Settings) -> str:
    return f"http://{HOST}:{settings.prefect_port}/api"


def user_url() -> str | None:
    """The user's own PREFECT_API_URL (environment or Prefect profile), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _duration(days: float) -> str:
    """An ISO 8601 duration, the form Prefect's settings parse from the environment."""
    return f"PT{int(days * 86400)}S"


def _home(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "prefect"


def healthy(url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s):
            return True
    except OSError:
        return False


def status(settings: Settings) -> PrefectStatus:
    pid = SERVER.running_pid(settings)
    return PrefectStatus(pid is not None, pid, local_url(settings), SERVER.log_file(settings))


def up(settings: Settings) -> PrefectStatus:
    """Start the local Prefect server (or reuse the running one); wait until it answers."""

    def launch() -> Launch:
        home = _home(settings)
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(home),  # its SQLite database lives here
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_API_HOST=HOST,
            PREFECT_SERVER_API_PORT=str(settings.prefect_port),
            PREFECT_UI_API_URL=local_url(settings),
            # Runs every few minutes for months: flow runs (with their task runs, logs and
            # artifacts) and events older than the retention are deleted by the server itself.
            PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED="events,flow_runs",
            PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD=_duration(
                settings.prefect_retention_days
            ),
            PREFECT_SERVER_EVENTS_RETENTION_PERIOD=_duration(
                min(settings.prefect_retention_days, 7)
            ),
            # Concurrency leases (the writer slots of flows.writers) on disk, not in the
            # server's memory: a server killed with -9 and started again otherwise forgets
            # every lease while their slots stay taken, and no writer of any table ever gets
            # in again. From disk, the restarted server takes back the slots of leases that
            # run out.
            PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=(
                "prefect.server.concurrency.lease_storage.filesystem"
            ),
        )
        cmd = [sys.executable, "-m", "prefect", "server", "start"]
        return Launch([*cmd, "--host", HOST, "--port", str(settings.prefect_port)], env)

    SERVER.start(
        settings,
        settings.prefect_port,
        launch,
        lambda: healthy(local_url(settings), timeout_s=2.0),
    )
    return status(settings)


def down(settings: Settings) -> PrefectStatus:
    """Stop the local Prefect server; a no-op when it is not running."""
    SERVER.stop(settings)
    return status(settings)


def api_url(settings: Settings) -> str:
    """The Prefect API flow runs use: the user's PREFECT_API_URL, else the local server.

    Raises:
        PrefectUnavailable: in one line, with what to do.
    """
    url = user_url()
    if url:
        if not healthy(url, timeout_s=10.0):
            raise PrefectUnavailable(
                f"no Prefect server answers at PREFECT_API_URL={url}: start it, or unset "
                "PREFECT_API_URL to use the local one (`ohlcv stack up`)"
            )
        return url
    local = local_url(settings)
    if not healthy(local, timeout_s=5.0):
        raise PrefectUnavailable(
            f"no Prefect server at {local}: run `ohlcv stack up` (it starts the local one), "
            "or set PREFECT_API_URL to yours"
        )
    return local
