"""The table maintenance flow: "OHLCV Table Maintenance", daily, and `ohlcv maintain`.

Each table is one task (see :mod:`spark_jobs.maintenance` for what is done and why it cannot
conflict with a running candle flow); the run records a metrics artifact with every table's
snapshots, metadata files, manifests, data files and bytes before and after.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron
from pyspark.sql import SparkSession

from core.tables import Tables
from flows.pipeline import tables_for
from flows.prefect_history import HistoryPruned, prune_flow_runs
from flows.stopping import ends_within_grace
from flows.writers import one_writer
from infra.session import session
from settings import Settings
from spark_jobs import maintenance
from spark_jobs.maintenance import MaintenancePolicy, TableMaintenance

FLOW_NAME = "OHLCV Table Maintenance"
CRON = "17 3 * * *"  # UTC, daily; a minute no candle schedule uses


def policy_for(settings: Settings) -> MaintenancePolicy:
    return MaintenancePolicy(
        snapshot_age=timedelta(hours=settings.snapshot_retention_h),
        retain_last=settings.snapshots_retain_last,
        orphan_age=timedelta(hours=settings.orphan_file_age_h),
    )


@task(name="maintain_table", cache_policy=NO_CACHE)
def maintain_table(
    spark: SparkSession, tables: Tables, name: str, policy: MaintenancePolicy, now: datetime
) -> TableMaintenance:
    """Expire, compact and clean one table."""
    done = maintenance.maintain_table(spark, tables, name, policy, now)
    logger = get_run_logger()
    logger.info(
        "%s: %d snapshots expired, %d files compacted into %d, %d manifests rewritten, "
        "%d orphan files removed; data files %d -> %d, metadata files %d -> %d (%.1f s)",
        name,
        done.snapshots_expired,
        done.files_compacted,
        done.files_written,
        done.manifests_rewritten,
        done.orphans_removed,
        done.before.data_files,
        done.after.data_files,
        done.before.metadata_files,
        done.after.metadata_files,
        done.seconds,
    )
    for note in done.notes:
        logger.info("%s: %s", name, note)
    return done


def metrics_rows(
    results: list[TableMaintenance], history: HistoryPruned | None = None
) -> list[dict[str, Any]]:
    """One artifact row per table, and one for Prefect's history when it was pruned."""
    rows: list[dict[str, Any]] = [
        {
            "table": r.table,
            "snapshots": f"{r.before.snapshots} -> {r.after.snapshots}",
            "snapshots expired": r.snapshots_expired,
            "metadata files": f"{r.before.metadata_files} -> {r.after.metadata_files}",
            "manifests": f"{r.before.manifests} -> {r.after.manifests}",
            "data files": f"{r.before.data_files} -> {r.after.data_files}",
            "data bytes": f"{r.before.data_bytes} -> {r.after.data_bytes}",
            "files compacted": r.files_compacted,
            "orphans removed": r.orphans_removed,
            "seconds": r.seconds,
        }
        for r in results
    ]
    if history is not None:
        more = " (more next time)" if history.more else ""
        rows.append(
            {column: "" for column in rows[0]}
            | {
                "table": "Prefect history",
                "snapshots": f"{history.flow_runs} flow runs deleted{more}",
                "metadata files": f"{history.artifacts} artifacts deleted",
                "data files": f"ended before {history.cutoff:%Y-%m-%d %H:%M} UTC",
            }
        )
    return rows


@task(name="prune_prefect_history", cache_policy=NO_CACHE)
def prune_prefect_history(settings: Settings) -> HistoryPruned:
    """Delete flow runs older than the retention (with task runs, logs and artifacts)."""
    pruned = prune_flow_runs(
        timedelta(days=settings.prefect_retention_days), settings.prefect_delete_batch
    )
    get_run_logger().info(
        "Prefect history: %d flow runs and %d artifacts that ended before %s deleted%s",
        pruned.flow_runs,
        pruned.artifacts,
        pruned.cutoff,
        " (more remain: the next maintenance continues)" if pruned.more else "",
    )
    return pruned


@flow(name=FLOW_NAME, log_prints=False)
def ohlcv_maintenance_flow(tables: list[str] | None = None) -> list[TableMaintenance]:
    """Maintain the project's tables (all of them by default)."""
    settings = Settings()
    names = maintenance.chosen_tables(tables)
    now = datetime.now(UTC)
    results = []
    with ends_within_grace(), session(settings) as spark:
        present = maintenance.existing(spark, tables_for(settings), names)
        for name in sorted(set(names) - set(present)):
            get_run_logger().info("%s: not created yet (no landing pass ran); passed over", name)
        for name in present:
            # Candle tables have one writer at a time; trades' writer (ingestion) may append
            # during a compaction: its commit is rebased, nothing conflicts.
            with one_writer(settings, name) if name in maintenance.CANDLE_TABLES else nullcontext():
                results.append(
                    maintain_table(spark, tables_for(settings), name, policy_for(settings), now)
                )
    # Prefect's history is pruned by the whole maintenance only (`ohlcv maintain --table X`
    # maintains that table alone).
    history = prune_prefect_history(settings) if tables is None else None
    create_table_artifact(
        key="ohlcv-maintenance",
        table=metrics_rows(results, history),
        description="table maintenance and Prefect history",
    )
    return results


def maintenance_deployment() -> Any:
    """The daily maintenance deployment `ohlcv serve` runs beside the candle flows."""
    return ohlcv_maintenance_flow.to_deployment(
        name="ohlcv-maintenance",
        schedule=Cron(CRON, timezone="UTC"),
        parameters={},
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        tags=["ohlcv", "maintenance"],
        description=f"{FLOW_NAME}: expire snapshots, compact, remove orphans; cron '{CRON}' UTC",
    )
