"""Opening and closing Spark Connect sessions from settings.

The Connect client retries a call whose server is unreachable for ten minutes and more by
default, so a run whose server died would hang on for longer than any schedule. Sessions made
here retry within ``OHLCV_CONNECT_RETRY_S`` and log every retry; then the call fails. A server
that refuses connections is gone and is given up on sooner (:data:`REFUSED_RETRY_S`), and
closing a session never waits longer than :data:`CLOSE_WAIT_S` (see :mod:`infra.budgets`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from pyspark.sql.connect.client.reattach import ExecutePlanResponseReattachableIterator
from pyspark.sql.connect.client.retries import DefaultPolicy
from pyspark.sql.connect.session import SparkSession as ConnectSession

from infra.budgets import CLOSE_RETRY_S, CLOSE_WAIT_S, REFUSED_RETRY_S
from infra.net import port_open
from settings import Settings, redact

__all__ = ["ConnectError", "close", "connect", "redact", "server_gone", "session"]

_HOST_PORT = re.compile(r"^sc://(?P<host>[^:/;]+)(?::(?P<port>\d+))?")
log = logging.getLogger(__name__)
_REFUSED = "Connection refused"
"""What gRPC says of a port nothing listens on: the server process is gone."""


class BoundedRetries(DefaultPolicy):
    """The client's default retry rules, with backoffs that add up to at most ``budget_s``, and
    to at most :data:`REFUSED_RETRY_S` once the server refuses connections.

    One policy serves every call of its session (from any thread), so the time the server has
    been refusing is the session's, not one call's.
    """

    _FIRST_S, _FACTOR, _CAP_S = 0.05, 4.0, 5.0

    def __init__(self, budget_s: float, where: str) -> None:
        retries, total, wait = 0, 0.0, self._FIRST_S
        while total + min(wait, self._CAP_S) <= budget_s:
            total += min(wait, self._CAP_S)
            wait *= self._FACTOR
            retries += 1
        super().__init__(
            max_retries=retries,
            backoff_multiplier=self._FACTOR,
            initial_backoff=int(self._FIRST_S * 1000),
            max_backoff=int(self._CAP_S * 1000),
            jitter=0,
            recognize_server_retry_delay=False,
        )
        self.budget_s, self.where = budget_s, where
        self._refused: tuple[float, float] | None = None  # (first, last) refusal of this outage
        self._refused_lock = threading.Lock()

    def _refused_too_long(self, e: BaseException) -> bool:
        """Whether ``e`` is a refused connection and the server has refused for too long."""
        if _REFUSED not in str(e):
            return False
        now = time.monotonic()
        with self._refused_lock:
            # No refusal for longer than two backoffs: the last outage ended, a new one begins.
            if self._refused is None or now - self._refused[1] > 2 * self._CAP_S:
                self._refused = (now, now)
            else:
                self._refused = (self._refused[0], now)
            return now - self._refused[0] >= min(REFUSED_RETRY_S, self.budget_s)

    def can_retry(self, e: BaseException) -> bool:
        retry = bool(super().can_retry(e))
        if retry and self._refused_too_long(e):
            log.warning(
                "Spark Connect at %s refuses connections for %.0f s: the server is gone",
                self.where,
                REFUSED_RETRY_S,
            )
            return False
        if retry:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            log.warning(
                "Spark Connect at %s: %s; retrying for up to %.0f s (OHLCV_CONNECT_RETRY_S)",
                self.where,
                first,
                self.budget_s,
            )
        return retry


class ConnectError(RuntimeError):
    """No Spark Connect server answers at the configured address."""


_GONE = (_REFUSED, "SESSION_CHANGED", "SESSION_CLOSED")


def server_gone(e: BaseException) -> bool:
    """Whether ``e`` says the session's server is gone: it refuses connections, or a restarted
    server no longer knows the session. Nothing done with that session can succeed any more."""
    return isinstance(e, ConnectError) or any(mark in str(e) for mark in _GONE)


def probe(settings: Settings) -> str:
    """Check, without opening a session, that the configured endpoint can work: a Spark
    Connect URL, a token only where the client will send it, something listening. Returns the
    URL (with its token).

    Raises:
        ConnectError: with what to do.
    """
    remote = settings.remote
    match = _HOST_PORT.match(remote)
    if match is None:
        raise ConnectError(
            f"SPARK_REMOTE={redact(remote)!r} is not a Spark Connect URL: "
            "use sc://host:port/;token=...;use_ssl=true"
        )
    host, port = match["host"], int(match["port"] or 15002)
    params = {k.lower(): v for k, _, v in (p.partition("=") for p in remote.split(";")[1:])}
    if "token" in params and host != "localhost" and params.get("use_ssl", "").lower() != "true":
        # The client sends a token over TLS to every host but the name `localhost`: against a
        # plaintext server it would retry TLS handshakes for minutes.
        raise ConnectError(
            f"SPARK_REMOTE={redact(remote)!r} carries a token, which the Spark Connect client "
            f"sends only over TLS to any host but 'localhost': write sc://localhost:{port}/ "
            "for a server on this machine, or add ;use_ssl=true for a TLS server"
        )
    if not port_open("127.0.0.1" if host == "localhost" else host, port, timeout=3.0):
        hint = (
            "run `ohlcv stack up`" if settings.is_local else "check the server or fix SPARK_REMOTE"
        )
        raise ConnectError(
            f"no Spark Connect server reachable at {redact(remote)}: {hint} "
            "(or set SPARK_REMOTE to a running server)"
        )
    return remote


def connect(settings: Settings, *, tags: tuple[str, ...] = ()) -> SparkSession:
    """Open a new Spark Connect session (UTC, optionally tagged for interruption).

    Raises:
        ConnectError: when nothing listens at the configured address, with what to do.
    """
    remote = probe(settings)
    _install_finalizer()
    spark = SparkSession.builder.remote(remote).create()
    spark.client.set_retry_policies([BoundedRetries(settings.connect_retry_s, redact(remote))])
    try:
        spark.conf.set("spark.sql.session.timeZone", "UTC")  # the first call to the server
    except PySparkException as e:
        if "UNAUTHENTICATED" not in str(e) and "authenticat" not in str(e).lower():
            raise
        spark.stop()
        where = "set OHLCV_CONNECT_TOKEN" if settings.is_local else "fix ;token=… in SPARK_REMOTE"
        raise ConnectError(
            f"the Spark Connect server at {redact(remote)} refused the session: missing or "
            f"wrong token ({where})"
        ) from None
    for tag in tags:
        spark.addTag(tag)
    return spark


def close(spark: SparkSession) -> None:
    """Stop a session within :data:`CLOSE_WAIT_S`, whatever state its server is in.

    The Connect client releases finished executions from a background pool shared by every
    session of the process, and its own ``stop()`` waits for that pool without a bound: a
    release retrying a dead server held a failing run's exit for minutes. Here the pool is
    taken out of use (the next execution makes a new one) and its pending releases get until
    the deadline to finish (none are sent to a server that refuses connections); then
    ReleaseSession gets what is left of it (skipped for a server that is gone). Whatever still
    waits after that is cancelled by closing the channel.
    """
    deadline = time.monotonic() + CLOSE_WAIT_S
    client = cast(ConnectSession, spark).client
    client.set_retry_policies([BoundedRetries(CLOSE_RETRY_S, "(closing the session)")])
    endpoint: str = cast(Any, client._builder).endpoint  # host:port, as the channel dials it
    gone = not _listening(endpoint)
    _drain_releases(deadline, cancel=gone)
    if gone:
        spark.release_session_on_close = False  # type: ignore[attr-defined]
    stopper = threading.Thread(target=spark.stop, name="spark-connect-close", daemon=True)
    stopper.start()
    stopper.join(max(0.0, deadline - time.monotonic()))
    if stopper.is_alive():
        log.warning(
            "Spark Connect at %s did not release the session within %.0f s; closing the connection",
            endpoint,
            CLOSE_WAIT_S,
        )
        client._channel.close()  # fails the waiting call, so stop() ends
        stopper.join(CLOSE_RETRY_S)


def _finalize(self: ConnectSession) -> None:
    """What a Connect session does when it is garbage-collected: nothing that waits.

    pyspark's own finalizer closes the client, and that shuts down the release pool that every
    session of the process shares, waiting for its pending releases. A finalizer runs on
    whichever thread the collector interrupts, including gRPC's thread that adds the token to
    each call: there it waited for releases that waited for that thread, and every call of the
    process hung (seen in a test run: a flow's validation blocked for good on the server's
    config). A session closed already (:func:`close`) needs nothing; one left open has its
    channel closed on a thread of its own.
    """
    client = self.__dict__.get("_client")
    if client is None or client.is_closed:
        return
    threading.Thread(
        target=client._channel.close, name="spark-connect-finalize", daemon=True
    ).start()


def _install_finalizer() -> None:
    """Give every Connect session :func:`_finalize` (idempotent; done by :func:`connect`)."""
    ConnectSession.__del__ = _finalize  # type: ignore[method-assign]


def _listening(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    return port_open("127.0.0.1" if host == "localhost" else host, int(port), timeout=0.5)


def _drain_releases(deadline: float, *, cancel: bool) -> None:
    """Take the client's ReleaseExecute pool out of use and give its work until ``deadline``
    (``cancel``, for a gone server: drop what has not started and wait for nothing). Its
    threads are not daemons (the interpreter joins them at exit): a release still running
    after the deadline ends at its next attempt, which fails on the closed channel."""
    iterator = ExecutePlanResponseReattachableIterator
    with iterator._lock:
        pool = iterator._release_thread_pool_instance
        iterator._release_thread_pool_instance = None
    if pool is None:
        return
    pool.shutdown(wait=False, cancel_futures=cancel)
    if cancel:
        return  # (nothing a gone server can be told: no waiting for releases already started)
    for thread in list(pool._threads):  # type: ignore[attr-defined]
        thread.join(max(0.0, deadline - time.monotonic()))
    pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def session(settings: Settings) -> Iterator[SparkSession]:
    """A session for the block, closed after it (see :func:`connect` and :func:`close`)."""
    spark = connect(settings)
    try:
        yield spark
    finally:
        close(spark)
