"""Process primitives of the local servers: start in a group of its own, check, stop, logs.

A leaf: it imports nothing of ``infra``, so every local server (:mod:`infra.local_servers`
and the four servers built on it) can use it without an import circle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from settings import redact

LOG_MAX_BYTES = 20 * 1024 * 1024

# Servers started by this process. Holding the Popen objects lets `down` reap them, and keeps
# Python from warning that a still-running child was garbage-collected.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """The local stack could not be started, reached or stopped."""


@dataclass(frozen=True)
class StackStatus:
    running: bool
    pid: int | None
    remote: str
    log_file: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "remote", redact(self.remote))  # never show a token

    def describe(self) -> str:
        if self.running:
            return f"running (pid {self.pid}) at {self.remote}; log: {self.log_file}"
        return f"stopped; log: {self.log_file}"


def rotate_log(log: Path, max_bytes: int = LOG_MAX_BYTES) -> None:
    """Before a server starts, move a log grown past ``max_bytes`` to ``<name>.1`` (replacing
    the previous one): a stack restarted for months keeps at most two logs."""
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > max_bytes:
            log.replace(log.with_name(log.name + ".1"))


def log_tail(log: Path, lines: int = 25) -> str:
    """The last ``lines`` of a server's log (for an error message)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with its pid, it names one process
    for good, as pids are reused (a busy machine cycles through 32,768 of them in minutes).
    None when the process is gone or the system has no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, started: int | None = None) -> bool:
    """Whether the process lives (a zombie counts as gone); with ``started`` (its
    :func:`start_time` when it was recorded), whether it is still that process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(FileNotFoundError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    if started is not None:
        now = start_time(pid)
        return now is None or now == started  # (None: no /proc to tell)
    return True


def _redacted(cmd: list[str]) -> str:
    return " ".join("password=***" if "password=" in part else part for part in cmd)


def spawn(
    log: Path,
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    umask: int = -1,
) -> int:
    """Start ``cmd`` with exactly ``env`` in a process group of its own (so `stop_process`
    stops its children too), its output appended to ``log``; ``umask`` (-1: inherited) sets
    the mode of the files it creates. Returns its pid."""
    rotate_log(log)
    with log.open("ab") as out:
        out.write(f"\n=== starting: {_redacted(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,  # a worker's executors die with its process group
            umask=umask,
        )
    _STARTED[proc.pid] = proc
    return proc.pid


def exit_status(pid: int) -> str:
    """How a server this process started ended ("exit 1", "signal 9"), if it is known."""
    proc = _STARTED.get(pid)
    code = proc.poll() if proc is not None else None
    if code is None:
        return "exit status unknown"
    return f"signal {-code}" if code < 0 else f"exit {code}"


def reap(pid: int) -> None:
    """Collect the exit status of a server this process started that died (crashed, killed)."""
    proc = _STARTED.pop(pid, None)
    if proc is not None:
        proc.wait(timeout=10)


def stop_process(pid: int, timeout_s: float = 30.0, started: int | None = None) -> None:
    """SIGTERM the process group of ``pid`` (a server started with a session of its own), then
    SIGKILL it after ``timeout_s``; with ``started``, only while ``pid`` is still that process
    (a pid freed meanwhile may already name another)."""
    if not alive(pid, started):
        reap(pid)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid, started):
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    reap(pid)
