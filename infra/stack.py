"""The local stack: the four local servers of one data directory, started and stopped together.

- the S3 server (:mod:`infra.object_store`) and the REST catalog (:mod:`infra.rest_catalog`),
  when the settings ask for them (``OHLCV_STORAGE=s3`` without an endpoint,
  ``OHLCV_CATALOG_TYPE=rest`` without a URI), started first: the Spark server's catalog is on them;
- the Spark Connect server (:mod:`infra.spark_server`);
- the Prefect server (:mod:`infra.prefect_server`), unless the user's ``PREFECT_API_URL`` is set.

:func:`up` starts the three a Spark session needs (what the tests and benchmarks use);
:func:`start` all four (``ohlcv stack up``, ``ohlcv demo``). Both are idempotent: running
servers of the data directory are reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from infra import object_store, prefect_server, rest_catalog, spark_server
from infra.processes import StackError, StackStatus
from settings import Settings

__all__ = ["LocalStack", "StackError", "StackStatus", "down", "start", "status", "stop", "up"]


def up(settings: Settings) -> StackStatus:
    """Start the Spark Connect server and what its catalog needs (or reuse them); its status."""
    spark_server.require_local(settings)
    if settings.local_s3:
        object_store.up(settings)
    if settings.local_rest:
        rest_catalog.up(settings)
    return spark_server.up(settings)


def status(settings: Settings) -> StackStatus:
    """The Spark Connect server's status."""
    return spark_server.status(settings)


def down(settings: Settings) -> StackStatus:
    """Stop the Spark Connect server (its standalone cluster, S3 server and REST catalog, if
    any); a no-op otherwise. The Prefect server is stopped by :func:`stop`."""
    stopped = spark_server.down(settings)
    rest_catalog.down(settings)
    object_store.down(settings)
    return stopped


def storage_and_catalog(settings: Settings) -> dict[str, StackStatus]:
    """The local S3 server's and REST catalog's status, when configured or running."""
    s3, rest = object_store.status(settings), rest_catalog.status(settings)
    shown = {}
    if settings.local_s3 or s3.running:
        shown["S3"] = s3
    if settings.local_rest or rest.running:
        shown["REST catalog"] = rest
    return shown


@dataclass(frozen=True)
class LocalStack:
    """What :func:`start` started (or found running), and how long each took."""

    spark: StackStatus
    spark_s: float
    storage_and_catalog: dict[str, StackStatus]
    prefect: prefect_server.PrefectStatus | None
    """None: the user's own Prefect API (``prefect_url``) is used, no local server started."""
    prefect_s: float = 0.0
    prefect_url: str | None = None


def start(
    settings: Settings,
    *,
    prepare: Callable[[Settings], None] | None = None,
    starting: Callable[[str], AbstractContextManager[object]] | None = None,
) -> LocalStack:
    """Start the four local servers (or reuse the running ones).

    Args:
        prepare: called once the Spark server runs (e.g. create the project's tables, which
            is not infra's business).
        starting: a context around each start, given the server's title (a spinner).
    """
    around = starting or (lambda title: nullcontext())
    began = time.monotonic()
    with around("Spark Connect server"):
        spark = up(settings)
        if prepare is not None:
            prepare(settings)
    spark_s = time.monotonic() - began
    shown = storage_and_catalog(settings)
    theirs = prefect_server.user_url()
    if theirs:
        return LocalStack(spark, spark_s, shown, None, prefect_url=theirs)
    began = time.monotonic()
    with around("Prefect server"):
        prefect = prefect_server.up(settings)
    return LocalStack(spark, spark_s, shown, prefect, time.monotonic() - began)


def stop(
    settings: Settings,
) -> tuple[StackStatus, dict[str, StackStatus], prefect_server.PrefectStatus]:
    """Stop the four local servers; their statuses after (Spark, storage and catalog, Prefect)."""
    spark = down(settings)
    shown = storage_and_catalog(settings)
    return spark, shown, prefect_server.down(settings)
