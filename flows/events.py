"""The pipeline's own Prefect events, which the alert automations (:mod:`flows.alerts`) watch.

Each event's resource is a table (``ohlcv.table.<catalog>.<namespace>.<table>``, labelled with
its timeframe); emitted inside a flow run, Prefect relates it to that run, its flow and its
deployment, so an alert links the run.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from core.timeframes import Timeframe
from expectations.validation import ValidationFailed
from settings import Settings

VALIDATION_FAILED = "ohlcv.validation.failed"
GAPS_EXCEEDED = "ohlcv.gaps.exceeded"
PUBLISHED = "ohlcv.candles.published"
TABLE_RESOURCE = "ohlcv.table."
TIMEFRAME_LABEL = "ohlcv.timeframe"


def table_resource(settings: Settings, tf: Timeframe) -> dict[str, str]:
    return {
        "prefect.resource.id": (
            f"{TABLE_RESOURCE}{settings.catalog_name}.{settings.namespace}.{tf.table}"
        ),
        "prefect.resource.name": tf.table,
        TIMEFRAME_LABEL: tf.name,
    }


def _emit(event: str, settings: Settings, tf: Timeframe, payload: dict[str, Any]) -> None:
    emit_event(event=event, resource=table_resource(settings, tf), payload=payload)


def validation_failed(settings: Settings, tf: Timeframe, error: ValidationFailed) -> None:
    """A validation blocked publication: the table, the failed expectations, the rejected tag."""
    _emit(
        VALIDATION_FAILED,
        settings,
        tf,
        {
            "table": tf.table,
            "failed_expectations": [
                f"{f.expectation} ({f.invariant}): {f.unexpected_count} rows"
                for f in error.report.failures
            ],
            "rejected_tag": error.rejected_tag or "none (nothing was written)",
        },
    )


def gaps(settings: Settings, tf: Timeframe, empty: int, windows: int) -> float:
    """Emit :data:`GAPS_EXCEEDED` when more than ``OHLCV_ALERT_GAP_SHARE`` of the gap report's
    windows had no trades; the share."""
    share = empty / windows if windows else 0.0
    if share > settings.alert_gap_share:
        _emit(
            GAPS_EXCEEDED,
            settings,
            tf,
            {
                "table": tf.table,
                "empty_windows": empty,
                "windows": windows,
                "share": round(share, 4),
                "threshold": settings.alert_gap_share,
            },
        )
    return share


def published(settings: Settings, tf: Timeframe, snapshot: int) -> None:
    """``main`` of the timeframe's table moved to ``snapshot``."""
    _emit(PUBLISHED, settings, tf, {"table": tf.table, "snapshot_id": str(snapshot)})
