"""The watcher of one test run: ``python -m tests.support.reaper <pytest pid> <run dir>``.

Every half second it records the processes descended from pytest (servers included: they run
in sessions of their own but are still pytest's children) in the run directory. When its
standard input ends (pytest exited or was killed: only pytest held the pipe's writing end) or
pytest is gone, it stops every recorded process still alive, removes the run directory and
exits. It ignores SIGINT and SIGTERM: it must outlive the run it watches.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
from pathlib import Path

from tests.support.cleanup import start_time, stop

TICK_S = 0.5


def _processes() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, process group, start time) of every process that can be read."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[1]), int(fields[2]), int(fields[19]))
    return out


def descendants(root: int) -> dict[int, tuple[int, int]]:
    """pid -> (start time, process group) of every living descendant of ``root``."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, tuple[int, int]] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = (table[pid][2], table[pid][1])
        todo += children.get(pid, [])
    return found


def watch(owner: int, run: Path) -> None:
    owner_start = start_time(owner)
    me = os.getpid()
    (run / "reaper.json").write_text(json.dumps({"pid": me, "start": start_time(me)}))
    seen: dict[int, tuple[int, int]] = {}
    while True:
        for pid, (started, group) in descendants(owner).items():
            if pid != me and seen.get(pid) != (started, group):
                seen[pid] = (started, group)
                (run / str(pid)).write_text(f"{started} {group}")
        ready, _, _ = select.select([sys.stdin], [], [], TICK_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # pytest ended (the pipe closed)
        if start_time(owner) != owner_start:
            break  # pytest is gone although the pipe is not closed (a child kept it open)
    left = stop([(pid, started, group) for pid, (started, group) in seen.items()])
    if left:
        print(f"stopped what the test run {owner} left running: {left}", flush=True)
    shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    watch(int(sys.argv[1]), Path(sys.argv[2]))
