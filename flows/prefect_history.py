"""Prefect's own history, bounded: flow runs older than ``OHLCV_PREFECT_RETENTION_DAYS`` are
deleted through the Prefect API, with their task runs, logs and artifacts.

Six deployments make about 1,500 flow runs a day, each with task runs, log lines and
artifacts; nothing in Prefect deletes them unless its server's database vacuum service is
enabled, which a shared server or Prefect Cloud may not be. So the maintenance flow deletes
them through the API, which works with any Prefect server: a flow run's deletion takes its task
runs along (a cascade in Prefect's database) and its logs (the server deletes them in the
background); its artifacts are deleted first, explicitly. One call deletes at most ``batch``
runs, oldest first: a first maintenance on a long history catches up over several runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterEndTime,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound

PAGE = 50
"""Flow runs (and artifacts) read per API round trip."""


@dataclass(frozen=True)
class HistoryPruned:
    flow_runs: int
    artifacts: int
    cutoff: datetime
    more: bool
    """True when the batch was full: older runs remain for the next maintenance."""


def prune_flow_runs(
    older_than: timedelta, batch: int, now: datetime | None = None
) -> HistoryPruned:
    """Delete up to ``batch`` flow runs that ended before ``now - older_than``, oldest first."""
    cutoff = (now or datetime.now(UTC)) - older_than
    deleted = artifacts = 0
    with get_client(sync_client=True) as client:
        while deleted < batch:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    end_time=FlowRunFilterEndTime(before_=cutoff)  # type: ignore[arg-type]
                ),
                sort=FlowRunSort.START_TIME_ASC,
                limit=min(PAGE, batch - deleted),
            )
            if not runs:
                return HistoryPruned(deleted, artifacts, cutoff, more=False)
            ids = [run.id for run in runs]
            while found := client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)),
                limit=PAGE,
            ):
                for artifact in found:
                    client.delete_artifact(artifact.id)
                    artifacts += 1
            for run_id in ids:
                try:
                    client.delete_flow_run(run_id)
                    deleted += 1
                except ObjectNotFound:  # deleted meanwhile (the server's own vacuum)
                    pass
    return HistoryPruned(deleted, artifacts, cutoff, more=True)
