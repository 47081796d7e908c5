"""The landing zone's ingest: "OHLCV Trades Ingest", a pass every minute, and the pass that
`ohlcv ingest DIR_OR_PREFIX` runs (:func:`landing_pass`, one path for both).

A pass holds the ``trades`` writer slot (:mod:`flows.writers`) while it ingests, so two passes
(the schedule and a person's `ohlcv ingest`) never append the same file side by side. From the
command line the slot is taken when a Prefect server answers; with none, a lock file of the
data directory stands in for it (:func:`flows.writers.local_writer`).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from core.tables import TRADES, ensure_tables
from flows.stopping import ends_within_grace
from flows.writers import one_writer
from infra import object_store
from infra.catalog import open_catalog
from ingest.landing import FileState, Landing, PassResult, landing_status, run_pass
from settings import Settings

FLOW_NAME = "OHLCV Trades Ingest"
DEPLOYMENT_NAME = "ohlcv-trades-ingest"
CRON = "* * * * *"  # UTC, every minute: new files wait at most a minute
TAGS = ["ohlcv", "ingest"]
PARAMETERS: dict[str, Any] = {}  # the landing zone comes from OHLCV_LANDING


def landing_of(settings: Settings, location: str | None) -> Landing:
    """The landing zone at ``location``, else ``OHLCV_LANDING``.

    Raises:
        ValueError: neither names one (in one line, saying what to set).
    """
    where = location or settings.landing
    if not where:
        raise ValueError(
            "no landing zone: name a file, a directory or s3://bucket/prefix, or set OHLCV_LANDING"
        )
    return Landing.at(where, lambda: object_store.filesystem(settings))


def landing_pass(
    settings: Settings,
    location: str | None = None,
    *,
    fmt: str | None = None,
    exchange: str | None = None,
    lock: bool = True,
) -> PassResult:
    """One pass over the landing zone (see :mod:`ingest.landing`), holding the ``trades``
    writer slot when ``lock``."""
    landing = landing_of(settings, location)
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    with one_writer(settings, TRADES) if lock else nullcontext():
        return run_pass(
            catalog,
            settings.namespace,
            landing,
            max_files=settings.landing_max_files,
            max_bytes=settings.landing_max_bytes,
            batch_rows=settings.landing_batch_rows,
            fmt=fmt,
            exchange=exchange,
        )


def landing_states(settings: Settings, location: str | None = None) -> list[FileState]:
    """Every file of the landing zone and its state (pending, changed, ingested, failed)."""
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    return landing_status(catalog, settings.namespace, landing_of(settings, location))


def result_rows(result: PassResult) -> list[dict[str, Any]]:
    """One row per file the pass settled (the artifact's table, the command's output)."""
    changed = set(result.changed)
    return [
        {
            "file": r.identity.path,
            "status": "changed, ingested again" if r.identity.path in changed else r.status,
            "format": r.format or "",
            "rows": r.rows if r.rows is not None else "",
            "reason": r.reason or "",
        }
        for r in result.ingested + result.failed
    ]


@flow(name=FLOW_NAME, log_prints=False)
def ohlcv_trades_ingest_flow() -> PassResult | None:
    """Ingest the landing zone's new files, each once."""
    settings = Settings()
    logger = get_run_logger()
    if not settings.landing:
        logger.info("OHLCV_LANDING is not set: no landing zone to ingest")
        return None
    with ends_within_grace():
        result = landing_pass(settings)
    logger.info(
        "%d files ingested (%d changed), %d failed, %d left for the next pass; trades: "
        "%d accepted, %d duplicates, %d rejected (%.1f s)",
        len(result.ingested),
        len(result.changed),
        len(result.failed),
        result.left,
        result.accepted,
        result.duplicates,
        result.rejected,
        result.seconds,
    )
    if result.ingested or result.failed:
        create_table_artifact(
            key="ohlcv-trades-ingest", table=result_rows(result), description="landing zone pass"
        )
    return result


def ingest_deployment() -> Any:
    """The every-minute landing zone deployment `ohlcv serve` runs beside the others."""
    return ohlcv_trades_ingest_flow.to_deployment(
        name=DEPLOYMENT_NAME,
        schedule=Cron(CRON, timezone="UTC"),
        parameters=PARAMETERS,
        concurrency_limit=ConcurrencyLimitConfig(
            # a pass still running when the next minute comes: that minute's run is skipped
            limit=1,
            collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW,
        ),
        tags=TAGS,
        description=f"{FLOW_NAME}: each new file of OHLCV_LANDING once; cron '{CRON}' UTC",
    )
