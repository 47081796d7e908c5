"""`ohlcv serve`: every deployment in one process (Prefect's runner), stopped within seconds.

Two traps of Prefect's ``serve()`` are avoided here. Stopping it pauses every schedule unless
told not to (PrefectHQ/prefect#16363): a supervisor restarting `serve`, or an operator stopping
it for a minute, would leave the pipeline unscheduled for good. So schedules stay active on
the server when `serve` stops; runs due meanwhile wait there, and the next `serve` (or a worker
of the ``ohlcv`` pool) picks up the newest (:func:`flows.candle_flows._superseded` skips the
older ones). And on the way out the runner cancels its in-flight runs through the Prefect API:
with that server down each call retries for a minute or more. So SIGTERM and SIGINT also arm a
watchdog that ends the process after :data:`infra.budgets.SERVE_STOP_S`; a run it leaves
behind frees its writer slot when its lease runs out (:mod:`flows.writers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

from prefect.exceptions import TerminationSignal
from prefect.runner import Runner

from flows.automations import HEARTBEAT_S
from flows.stopping import arm_watchdog
from infra.budgets import SERVE_STOP_S


class _StoppingRunner(Runner):
    """Prefect's runner, whose stop signals also arm the watchdog (SIGINT as SIGTERM)."""

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        signum = args[0] if args and isinstance(args[0], int) else signal.SIGTERM
        arm_watchdog(signum, SERVE_STOP_S, "ohlcv serve")
        super().handle_sigterm(*args, **kwargs)


def _quiet_lost_connections() -> None:
    """A Prefect server that goes away closes the runner's websockets; Prefect logs that with
    a full traceback (a websockets ``ConnectionClosedError``), though the runner reconnects by
    itself: on serve's console, each such record is one line naming the exception."""

    class OneLine(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and record.exc_info[1] is not None:
                record.msg = f"{record.getMessage()} ({type(record.exc_info[1]).__name__})"
                record.args = None
                record.exc_info = None
                record.exc_text = None
            return True

    one_line = OneLine()
    for handler in logging.getLogger("prefect").handlers + logging.getLogger().handlers:
        handler.addFilter(one_line)


def serve(*deployments: Any) -> None:
    """Serve ``deployments`` until SIGTERM or SIGINT; schedules stay active afterwards."""
    # Heartbeats every 30 s from the flow-run processes (they inherit this environment), so a
    # run whose process died is found and crashed (flows.automations).
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))
    runner = _StoppingRunner(pause_on_shutdown=False)
    for deployment in deployments:
        runner.add_deployment(deployment)
    _quiet_lost_connections()
    signal.signal(signal.SIGINT, runner.handle_sigterm)
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())
