"""The one implementation of a local server: a pid file, a log, and waiting until healthy.

The four servers of the local stack (the Spark Connect server, :mod:`infra.spark_server`; the
Prefect server, :mod:`infra.prefect_server`; the S3 server, :mod:`infra.object_store`; the REST
catalog, :mod:`infra.rest_catalog`) are started alike: loopback only, a pid file and a log
under ``<data_dir>/stack``, a running server of the data directory reused, a health check
before ``up`` returns, and one clear line when their port is taken. Configuration with secrets
goes to a properties file of mode 600 (a command line would show secrets in ``ps``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from infra.net import port_open
from infra.processes import (
    StackError,
    StackStatus,
    alive,
    exit_status,
    log_tail,
    reap,
    spawn,
    start_time,
    stop_process,
)
from settings import Settings

HOST = "127.0.0.1"
JVM_OPTIONS = ["-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
"""Small helper servers: a small heap and the quick compiler keep them light on 2 cores."""


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (mode 600, also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def java_properties(values: dict[str, str]) -> str:
    """``values`` as a Java properties file (backslashes and line breaks escaped)."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")

    return "".join(f"{escape(k)}={escape(v)}\n" for k, v in values.items())


@dataclass(frozen=True)
class Launch:
    """How to start a server: its command, its whole environment, the umask of its files."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    umask: int = -1


@dataclass(frozen=True)
class LocalServer:
    """One loopback server of the stack, named ``name`` in its files under the stack dir.

    ``error`` is what its failures raise; ``timeout_setting`` the settings field (and, as
    ``OHLCV_<FIELD>``, the variable) bounding its start-up; ``port_hint`` ends the message
    about a taken port.
    """

    name: str
    title: str
    port_variable: str
    error: type[StackError] = StackError
    timeout_setting: str = "server_start_timeout_s"
    port_hint: str = ""

    def pid_file(self, settings: Settings) -> Path:
        return settings.stack_dir / f"{self.name}.json"

    def log_file(self, settings: Settings) -> Path:
        return settings.stack_dir / f"{self.name}.log"

    def config_file(self, settings: Settings) -> Path:
        return settings.stack_dir / f"{self.name}.properties"

    def write_config(self, settings: Settings, config: dict[str, str]) -> Path:
        """Write the server's configuration, secrets included, as properties (mode 600)."""
        write_private(self.config_file(settings), java_properties(config))
        return self.config_file(settings)

    def _recorded(self, settings: Settings) -> tuple[int | None, int | None]:
        """The pid in the pid file (the process may be gone) and its recorded start time."""
        try:
            data = json.loads(self.pid_file(settings).read_text())
            return int(data["pid"]), data.get("start")
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None, None

    def recorded_pid(self, settings: Settings) -> int | None:
        """The pid in the pid file (the process may be gone)."""
        return self._recorded(settings)[0]

    def running_pid(self, settings: Settings) -> int | None:
        """The pid of this data directory's running server, if any: the recorded pid, if that
        process still lives and is the one recorded (not another that got its pid since)."""
        pid, started = self._recorded(settings)
        return pid if pid is not None and alive(pid, started) else None

    def status(self, settings: Settings, url: str) -> StackStatus:
        pid = self.running_pid(settings)
        return StackStatus(pid is not None, pid, url, self.log_file(settings))

    def refuse_a_taken_port(self, settings: Settings, port: int, host: str = HOST) -> None:
        """Fail in one line when another process holds ``port`` (this data directory's own
        running server may). Checked before anything is fetched or written.

        Raises:
            StackError: naming the port and the setting that moves it.
        """
        if self.running_pid(settings) is None and port_open(host, port):
            raise self.error(
                f"port {port} on {host} is used by another process, so the {self.title} cannot "
                f"start: stop it or choose another port with {self.port_variable}{self.port_hint}"
            )

    def start(
        self,
        settings: Settings,
        port: int,
        launch: Callable[[], Launch],
        healthy: Callable[[], bool],
        host: str = HOST,
    ) -> int:
        """Run what ``launch()`` prepares and wait until ``healthy()``; return the pid.

        A server of this data directory that is already running is reused (``launch`` is not
        called); one of ours that died, or dies while it is awaited (killed a moment ago, its
        exit not yet complete), is reaped first and replaced.

        Raises:
            StackError: the port is taken by another process, the server exited, or it was not
                healthy within the start-up timeout.
        """
        pid = self.running_pid(settings)
        if pid is not None and self._await(settings, pid, healthy):
            return pid
        dead = self.recorded_pid(settings)
        if dead is not None:
            reap(dead)
        self.refuse_a_taken_port(settings, port, host)
        settings.stack_dir.mkdir(parents=True, exist_ok=True)
        how = launch()
        pid = spawn(self.log_file(settings), how.cmd, how.env, settings.stack_dir, how.umask)
        record = {"pid": pid, "port": port, "start": start_time(pid)}
        self.pid_file(settings).write_text(json.dumps(record))
        try:
            self.wait_healthy(settings, pid, healthy)
        except StackError:
            self.stop(settings)
            raise
        return pid

    def wait_healthy(self, settings: Settings, pid: int, healthy: Callable[[], bool]) -> None:
        """Wait until ``healthy()``.

        Raises:
            StackError: the server exited, or was not healthy within the start-up timeout.
        """
        if not self._await(settings, pid, healthy):
            raise self.error(
                f"the {self.title} exited during start-up ({exit_status(pid)}); last lines of "
                f"{self.log_file(settings)}:\n{log_tail(self.log_file(settings))}"
            )

    def _await(self, settings: Settings, pid: int, healthy: Callable[[], bool]) -> bool:
        """True once ``healthy()``, False if ``pid`` exits first.

        Raises:
            StackError: it was not healthy within the start-up timeout.
        """
        timeout_s = float(getattr(settings, self.timeout_setting))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not alive(pid):
                return False
            if healthy():
                return True
            time.sleep(0.25)
        raise self.error(
            f"the {self.title} was not healthy within {timeout_s:.0f} s "
            f"(OHLCV_{self.timeout_setting.upper()}); last lines of {self.log_file(settings)}:\n"
            f"{log_tail(self.log_file(settings))}"
        )

    def stop(self, settings: Settings) -> None:
        """Stop this data directory's server, if it runs (a no-op otherwise)."""
        pid, started = self._recorded(settings)
        if pid is not None:
            stop_process(pid, started=started)  # (one that is gone, or is another, is left)
        self.pid_file(settings).unlink(missing_ok=True)
