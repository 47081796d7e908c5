"""Opening Spark Connect sessions from settings.

The Connect client retries a call whose server is unreachable for ten minutes and more by
default, so a run whose server died would hang on for longer than any schedule. Sessions made
here retry within ``OHLCV_CONNECT_RETRY_S`` and log every retry; then the call fails.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from pyspark.sql.connect.client.reattach import ExecutePlanResponseReattachableIterator
from pyspark.sql.connect.client.retries import DefaultPolicy
from pyspark.sql.connect.session import SparkSession as ConnectSession

from infra.net import port_open
from settings import Settings, redact

__all__ = ["ConnectError", "close", "connect", "redact", "session"]

_HOST_PORT = re.compile(r"^sc://(?P<host>[^:/;]+)(?::(?P<port>\d+))?")
log = logging.getLogger(__name__)


class BoundedRetries(DefaultPolicy):
    """The client's default retry rules, with backoffs that add up to at most ``budget_s``."""

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

    def can_retry(self, e: BaseException) -> bool:
        retry = bool(super().can_retry(e))
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


CLOSE_RETRY_S = 2.0
"""Retry budget of the calls that close a session: releasing finished executions is a courtesy
(the server drops abandoned ones by itself), and must not hold a failing run's exit for a
whole connect budget per pending release when the server is gone."""


def close(spark: SparkSession) -> None:
    """Stop a session after its pending ReleaseExecute calls are done.

    The Connect client releases finished executions from a background pool; stopping the
    session first makes each late release fail with a logged SESSION_CLOSED warning.
    """
    client = cast(ConnectSession, spark).client
    client.set_retry_policies([BoundedRetries(CLOSE_RETRY_S, "(closing the session)")])
    ExecutePlanResponseReattachableIterator.shutdown()  # waits; the pool is recreated lazily
    spark.stop()


@contextmanager
def session(settings: Settings) -> Iterator[SparkSession]:
    """A session for the block, closed after it (see :func:`connect` and :func:`close`)."""
    spark = connect(settings)
    try:
        yield spark
    finally:
        close(spark)
