"""What the stack's loopback JVM servers beside Spark share: files, start, health, stop.

The local S3 server (:mod:`infra.object_store`) and the local REST catalog
(:mod:`infra.rest_catalog`) are started like the Spark Connect server: pinned jars, loopback
only, a pid file and a log under ``<data_dir>/stack``, a health check before ``up`` returns,
and one clear line when their port is taken. Their configuration, credentials included, is a
properties file of mode 600 (a command line would show secrets in ``ps``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra.net import port_open
from infra.stack import StackError, StackStatus, alive, spawn, stop_process
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
class LocalServer:
    """One loopback server of the stack, named ``name`` in its files under the stack dir."""

    name: str
    title: str
    port_variable: str

    def pid_file(self, settings: Settings) -> Path:
        return settings.stack_dir / f"{self.name}.json"

    def log_file(self, settings: Settings) -> Path:
        return settings.stack_dir / f"{self.name}.log"

    def config_file(self, settings: Settings) -> Path:
        return settings.stack_dir / f"{self.name}.properties"

    def _pid(self, settings: Settings) -> int | None:
        try:
            return int(json.loads(self.pid_file(settings).read_text())["pid"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def status(self, settings: Settings, url: str) -> StackStatus:
        pid = self._pid(settings)
        running = pid is not None and alive(pid)
        return StackStatus(running, pid if running else None, url, self.log_file(settings))

    def refuse_a_taken_port(self, settings: Settings, port: int) -> None:
        """Fail in one line when another process holds ``port`` (this data directory's own
        running server may). Checked before anything is fetched or written.

        Raises:
            StackError: naming the port and the setting that moves it.
        """
        pid = self._pid(settings)
        if (pid is None or not alive(pid)) and port_open(HOST, port):
            raise StackError(
                f"port {port} on {HOST} is used by another process, so the {self.title} cannot "
                f"start: stop it or choose another port with {self.port_variable}"
            )

    def start(
        self,
        settings: Settings,
        port: int,
        cmd: list[str],
        config: dict[str, str],
        healthy: Callable[[], bool],
        env: dict[str, str] | None = None,
        umask: int = -1,
    ) -> int:
        """Write ``config`` (mode 600), run ``cmd`` and wait until ``healthy()``; return the pid.

        A server of this data directory that is already running is reused.

        Raises:
            StackError: the port is taken by another process, the server exited, or it was not
                healthy within ``OHLCV_SERVER_START_TIMEOUT_S``.
        """
        pid = self._pid(settings)
        if pid is not None and alive(pid):
            self._wait_healthy(settings, pid, healthy)
            return pid
        self.refuse_a_taken_port(settings, port)
        settings.stack_dir.mkdir(parents=True, exist_ok=True)
        write_private(self.config_file(settings), java_properties(config))
        pid = spawn(settings, self.log_file(settings), cmd, env, umask=umask)
        self.pid_file(settings).write_text(json.dumps({"pid": pid, "port": port}))
        try:
            self._wait_healthy(settings, pid, healthy)
        except StackError:
            self.stop(settings)
            raise
        return pid

    def _wait_healthy(self, settings: Settings, pid: int, healthy: Callable[[], bool]) -> None:
        deadline = time.monotonic() + settings.server_start_timeout_s
        while time.monotonic() < deadline:
            if not alive(pid):
                raise StackError(
                    f"the {self.title} exited during start-up; last lines of "
                    f"{self.log_file(settings)}:\n{self._log_tail(settings)}"
                )
            if healthy():
                return
            time.sleep(0.25)
        raise StackError(
            f"the {self.title} was not healthy within {settings.server_start_timeout_s:.0f} s "
            f"(OHLCV_SERVER_START_TIMEOUT_S); last lines of {self.log_file(settings)}:\n"
            f"{self._log_tail(settings)}"
        )

    def _log_tail(self, settings: Settings, lines: int = 25) -> str:
        try:
            text = self.log_file(settings).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, settings: Settings) -> None:
        """Stop this data directory's server, if it runs (a no-op otherwise)."""
        pid = self._pid(settings)
        if pid is not None and alive(pid):
            stop_process(pid)
        self.pid_file(settings).unlink(missing_ok=True)
