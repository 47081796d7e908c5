"""Servers the suite starts end when the suite ends, however it ends.

Three layers, each covering what the one before cannot:

1. SIGTERM (a CI time limit, a service manager) raises KeyboardInterrupt in pytest, as Ctrl-C
   does, so pytest runs its normal teardown: every fixture stops what it started. The signal is
   repeated to pytest's main thread until it is handled (:class:`_Forwarder`): Python runs a
   handler only between bytecodes, so one that lands just before a blocking call is not
   handled until the call returns.
2. A watcher process (:mod:`tests.support.reaper`), in a session of its own, records every
   process descended from pytest (the servers run in sessions of their own, so no signal to
   pytest's process group reaches them) and stops those still alive when pytest has gone,
   however it went (kill -9 included): it notices at once, through a pipe only pytest holds.
3. What the watcher records lives in ``.ohlcv/test-runs/<pytest pid>/``; a run whose pytest
   and watcher are both dead (both killed) is swept at the next start.

Used as a plugin (``-p tests.support.cleanup``) or from a conftest's hooks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

from infra import processes

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / ".ohlcv" / "test-runs"
"""One directory per pytest run of this checkout: ``owner.json``, ``reaper.json``, and one
file per process the run started (``<pid>``: its start time and process group)."""
STOP_GRACE_S = 10.0
"""How long a server gets to stop on SIGTERM before it is killed."""

_WATCHER = pytest.StashKey[subprocess.Popen[bytes]]()
_HANDLER = pytest.StashKey[object]()
_FORWARDER = pytest.StashKey["_Forwarder"]()


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (:func:`infra.processes.start_time`); None when the
    process is gone, a zombie included, except a JVM whose main thread is a zombie while its
    other threads (and its sockets) still live."""
    started = processes.start_time(pid)
    with contextlib.suppress(OSError):
        zombie = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        if zombie and _threads(pid) <= 1:
            return None
    return started


def _threads(pid: int) -> int:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0


def same_process(pid: int, started: int) -> bool:
    return start_time(pid) == started


def stop(processes: list[tuple[int, int, int]], grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM each ``(pid, start time, process group)`` still alive (its whole group when it
    leads one), SIGKILL what is left after ``grace_s``; return the pids that were alive."""
    alive = [p for p in processes if same_process(p[0], p[1])]

    def send(signum: int) -> None:
        for pid, started, group in alive:
            if not same_process(pid, started):
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group == pid:
                    os.killpg(pid, signum)
                else:
                    os.kill(pid, signum)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(same_process(p, s) for p, s, _ in alive):
        time.sleep(0.1)
    send(signal.SIGKILL)
    return [pid for pid, _, _ in alive]


def recorded(run: Path) -> list[tuple[int, int, int]]:
    """The processes a run's watcher recorded: ``(pid, start time, process group)``."""
    out = []
    for entry in run.glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            started, group = entry.read_text().split()
            out.append((int(entry.name), int(started), int(group)))
    return out


def _alive(run: Path, name: str) -> bool:
    try:
        data = json.loads((run / name).read_text())
    except (OSError, ValueError):
        return False
    return same_process(int(data["pid"]), int(data["start"]))


def sweep(registry: Path = REGISTRY) -> list[int]:
    """Stop what earlier runs left behind when both their pytest and watcher are dead (a run
    still going, in another terminal, is left alone); return the pids stopped."""
    stopped: list[int] = []
    for run in sorted(registry.glob("*")) if registry.is_dir() else []:
        if _alive(run, "owner.json") or _alive(run, "reaper.json"):
            continue
        stopped += stop(recorded(run))
        shutil.rmtree(run, ignore_errors=True)
    return stopped


_INTERRUPTED = threading.Event()
"""Set once SIGTERM has raised KeyboardInterrupt: later ones must not cut the teardown short."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if _INTERRUPTED.is_set():
        return  # (the teardown it started is running; the watcher covers a kill -9)
    _INTERRUPTED.set()
    raise KeyboardInterrupt(f"{signal.Signals(signum).name}: the suite stops its servers")


class _Forwarder:
    """Repeats SIGTERM to the main thread until :func:`_interrupt` has run there.

    Python's C-level handler only marks a signal; the Python handler runs when the main thread
    next runs bytecode. A SIGTERM that lands after the last check and before a blocking call
    begins (a test's ``time.sleep(900)``: about one try in eight here) waits for that call to
    return, and so does one the kernel hands to another thread. The C handler also writes the
    signal's number to the wakeup fd; this thread reads it and, every half second until the
    handler has run, sends SIGTERM to the main thread, whose blocking call then ends (EINTR).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # (the C handler must never block on it)
        self._main = threading.main_thread().ident
        self._tries = 20  # (a SIGTERM handler someone installed meanwhile may never set it)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        if self._previous != -1:  # someone else's: theirs stays, and nothing is forwarded
            signal.set_wakeup_fd(self._previous)
            os.close(self._read)
            os.close(self._write)
        else:
            threading.Thread(target=self._run, name="sigterm-forwarder", daemon=True).start()

    def _run(self) -> None:
        while data := os.read(self._read, 64):
            if signal.SIGTERM in data:
                self._repeat()
        os.close(self._read)

    def _repeat(self) -> None:
        assert self._main is not None
        while self._tries > 0 and not _INTERRUPTED.wait(0.5):
            if signal.getsignal(signal.SIGTERM) is not _interrupt:
                return  # (a test's own handler, or ours restored: not ours to force)
            self._tries -= 1
            signal.pthread_kill(self._main, signal.SIGTERM)

    def close(self) -> None:
        if self._previous == -1:
            signal.set_wakeup_fd(-1)
            os.close(self._write)  # (the thread reads the end of the pipe and returns)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")  # a pytest-xdist worker: its controller does this


def configure(config: pytest.Config, registry: Path = REGISTRY) -> None:
    """Sweep, then watch this run (once per pytest process)."""
    if _is_worker(config) or _WATCHER in config.stash:
        return
    stale = sweep(registry)
    if stale:
        sys.stderr.write(f"stopped {len(stale)} processes an earlier test run left: {stale}\n")
    run = registry / str(os.getpid())
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    me = {"pid": os.getpid(), "start": start_time(os.getpid())}
    (run / "owner.json").write_text(json.dumps(me))
    with (run / "reaper.log").open("wb") as log:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "tests.support.reaper", str(os.getpid()), str(run)],
            cwd=ROOT,
            stdin=subprocess.PIPE,  # only this process holds the writing end
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals to pytest's process group do not reach it
        )
    config.stash[_WATCHER] = watcher
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        config.stash[_HANDLER] = signal.signal(signal.SIGTERM, _interrupt)
        config.stash[_FORWARDER] = _Forwarder()


def unconfigure(config: pytest.Config) -> None:
    """Tell the watcher the run is over; it stops whatever is left and removes the record."""
    watcher = config.stash.get(_WATCHER, None)
    if watcher is None:
        return
    del config.stash[_WATCHER]
    if _HANDLER in config.stash:
        signal.signal(signal.SIGTERM, config.stash[_HANDLER])  # type: ignore[arg-type]
        config.stash[_FORWARDER].close()
    assert watcher.stdin is not None
    watcher.stdin.close()
    try:
        watcher.wait(STOP_GRACE_S + 20)
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"the test run's watcher (pid {watcher.pid}) is still stopping\n")


pytest_configure = configure
pytest_unconfigure = unconfigure
