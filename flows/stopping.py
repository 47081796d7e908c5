"""A run that is told to stop (SIGTERM, SIGINT) ends within a bounded time, whatever happens.

The graceful path is Python's and Prefect's: the signal becomes an exception in the main thread
(``KeyboardInterrupt``, Prefect's ``TerminationSignal``), :func:`flows.candle_flows.interruptible`
interrupts the run's server-side operations, the flow run is marked crashed and the process
exits, in seconds. But an exception raised at an arbitrary point can leave a lock held (in a
logging handler, an HTTP client) and the exit then waits forever: measured once under load, a
run that got SIGINT was still alive two minutes later. So the first signal also arms a
watchdog that ends the process after :data:`STOP_GRACE_S` if the graceful path has not. The
server drops whatever a vanished client left running
(:data:`infra.spark_server.ABANDONED_OPERATIONS_CONF`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from infra.budgets import STOP_GRACE_S


def arm_watchdog(signum: int, grace_s: float | None = None, what: str = "the run") -> None:
    """End the process ``grace_s`` (default :data:`STOP_GRACE_S`, read now) from now, with exit
    status 128 + ``signum``, unless it has ended."""
    grace_s = STOP_GRACE_S if grace_s is None else grace_s

    def expire() -> None:
        name = signal.Signals(signum).name
        print(f"{name}: {what} did not end within {grace_s:.0f} s; exiting", file=sys.stderr)
        os._exit(128 + signum)

    timer = threading.Timer(grace_s, expire)
    timer.daemon = True
    timer.start()


@contextlib.contextmanager
def ends_within_grace() -> Iterator[None]:
    """Within the block, SIGTERM keeps its handling (Prefect's, inside a flow run), SIGINT
    takes the same path, and either also arms the watchdog. Outside the main thread (where
    handlers cannot be installed) a no-op.

    SIGINT as SIGTERM: Python's ``KeyboardInterrupt`` raised inside Prefect's engine ended the
    run in 2 s on an idle machine but twice hung under load (still alive 30 s and 120 s
    later), while Prefect's termination path ended every SIGTERM'ed run in under 2 s.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def chained(signum: int, frame: FrameType | None) -> None:
        arm_watchdog(signum)
        handler = previous[signum]
        terminate = previous[signal.SIGTERM]
        if signum == signal.SIGINT and callable(terminate) and terminate is not chained:
            terminate(signal.SIGTERM, frame)  # Prefect's bridge: TerminationSignal
        elif callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        # SIG_IGN: ignored, as before (the watchdog is armed nevertheless)

    for stop in (signal.SIGTERM, signal.SIGINT):
        previous[stop] = signal.signal(stop, chained)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
