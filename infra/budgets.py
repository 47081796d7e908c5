"""Every wait on the way out of a run, in one place.

A run that fails, times out or is told to stop must end whatever state its servers are in: a
Spark Connect server killed with -9 refuses connections, a stopped (SIGSTOP) or overloaded one
accepts them and never answers. Each wait below has a bound, and the bounds add up: a run whose
server dies ends within about :data:`REFUSED_RETRY_S` + :data:`CLOSE_WAIT_S` of the death, and a
run told to stop within :data:`STOP_GRACE_S` at the latest.
"""

from __future__ import annotations

REFUSED_RETRY_S = 4.0
"""How long a Spark Connect call retries a server that refuses connections. Nothing listens on
its port any more: the process is gone, and with it every session it held (a restarted server
answers an old session with SESSION_CHANGED), so waiting longer cannot save the call. Other
unavailability (a network blip, a server busy accepting) keeps the whole
``OHLCV_CONNECT_RETRY_S``."""

CLOSE_RETRY_S = 2.0
"""Retry budget of each call that closes a session (ReleaseExecute, ReleaseSession): releasing
is a courtesy, the server drops abandoned executions by itself
(:data:`infra.stack.ABANDONED_OPERATIONS_CONF`)."""

CLOSE_WAIT_S = 5.0
"""How long closing a session waits in all: for the client's pending ReleaseExecute calls, then
for ReleaseSession. What is still running then is cancelled by closing the channel."""

UNWIND_S = 10.0
"""How long a stopping run waits for the server to acknowledge an interrupt, and then for the
interrupted call to unwind: a signal or a timeout ends the run within about twice this, even
when the server no longer answers (then nothing of ours can commit there either)."""

STOP_GRACE_S = 30.0
"""How long a run told to stop (SIGTERM, SIGINT) may take to end gracefully before a watchdog
ends the process (interrupting its server-side work takes at most 2 x :data:`UNWIND_S`)."""

SERVE_STOP_S = 8.0
"""How long `ohlcv serve` told to stop (SIGTERM, SIGINT) may take to end gracefully before a
watchdog ends it. Prefect's runner cancels its in-flight runs through the Prefect API on the way
out; with that server down each call retries for a minute or more (measured: still running 63 s
after SIGTERM). The schedules live on the server either way (serve never pauses them)."""
