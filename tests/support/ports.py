"""The suite's fixed ports, and who holds one when it is taken.

Every server the suite starts listens on a fixed port moved by ``TEST_PORT_OFFSET``, so a
developer's `make demo` server (15002) is never touched and a second checkout can test beside
this one with another offset.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from infra.net import port_open

WORKER_STRIDE = 50
"""How far apart the ports of two pytest-xdist workers are: wider than the widest run of
consecutive base ports the tests use (14052-14063, 15012-15020), narrower than the gaps between
those runs, so no worker's port is another worker's."""
OFFSET = int(os.environ.get("TEST_PORT_OFFSET", "0")) + WORKER_STRIDE * int(
    os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0
)


def port(base: int) -> int:
    """A fixed test port, moved by TEST_PORT_OFFSET and by the xdist worker (every server a
    test starts, and every port a test expects to find closed, goes through here)."""
    return base + OFFSET


def _listening_inodes(number: int) -> set[str]:
    """Socket inodes listening on TCP port ``number`` (IPv4 and IPv6), from /proc/net."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == number:
                    inodes.add(inode)
    return inodes


def holder(number: int) -> int | None:
    """The pid of the process listening on TCP port ``number``, when it can be seen (one of
    this user's processes); None otherwise."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(number)}
    if not wanted:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return int(proc.name)
    return None


def describe(pid: int) -> str:
    """``pid``'s program (a Java server by its main class) and working directory, in a few
    words: enough to tell a stale test server (cwd under pytest's temporary directory)."""
    try:
        argv = [
            a.decode(errors="replace")
            for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if a
        ]
    except OSError:
        return "gone"
    program = Path(argv[0]).name if argv else "?"
    main = next((a for a in argv if a.startswith("org.")), None)
    what = f"{program} {main}" if main else " ".join([program, *argv[1:3]])
    with contextlib.suppress(OSError):
        what += f", cwd {os.readlink(f'/proc/{pid}/cwd')}"
    return what


def taken(number: int, what: str) -> str | None:
    """One line saying who holds ``number`` and what to do, or None when it is free."""
    if not port_open("127.0.0.1", number):
        return None
    pid = holder(number)
    who = f"pid {pid} ({describe(pid)})" if pid is not None else "a process this user cannot see"
    stop = f"stop it (`kill {pid}`)" if pid is not None else "stop it"
    return (
        f"port {number} ({what}) is held by {who}: {stop}, or run the tests with another "
        f"TEST_PORT_OFFSET (now {OFFSET})"
    )


class PortTaken(RuntimeError):
    """A port the suite needs is held by another process (the message is one line)."""


def refuse_taken(wanted: list[tuple[int, str]]) -> None:
    """Raise :class:`PortTaken` for the first of ``(port, what)`` that another process holds."""
    for number, what in wanted:
        if (problem := taken(number, what)) is not None:
            raise PortTaken(problem)
