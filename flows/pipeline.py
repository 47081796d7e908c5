"""One timeframe's run as three steps: generate -> validate -> publish (write-audit-publish).

- generate: reset the audit branch to ``main``, recompute the affected windows and MERGE what
  changed into the audit branch (with the late-trade watermark in its snapshot summary);
- validate: the GX invariant suite on exactly the windows written, read from the audit branch,
  plus (5m and longer) reconciliation with the next smaller timeframe's published candles;
- publish: fast-forward ``main`` to the audit branch.

A failed validation raises :class:`ValidationFailed`, leaves ``main`` exactly as it was (its
snapshot, so also its watermark: the next run recomputes the same trades) and tags the
rejected snapshot ``rejected-<time>`` for inspection. The steps are separate functions so that
orchestration (the Prefect tasks of :mod:`flows`) can retry and time them individually.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pyspark.sql import SparkSession

from expectations.frames import invariant_frame, reconciliation_frame
from expectations.suites import invariant_suite, reconciliation_suite, rollup_source
from expectations.validation import ValidationFailed, ValidationReport, run_checkpoint
from settings import Settings
from spark_jobs import jobs, wap
from spark_jobs.tables import Tables
from spark_jobs.timeframes import Timeframe

log = logging.getLogger(__name__)


@dataclass
class Validation:
    """The validation of one run: invariants, and reconciliation where there is a rollup."""

    invariants: ValidationReport | None = None
    reconciliation: ValidationReport | None = None
    reconciliation_gating: bool = False
    notes: list[str] = field(default_factory=list)  # informational
    warnings: list[str] = field(default_factory=list)  # a non-gating check failed

    @property
    def blocking(self) -> ValidationReport | None:
        """The failed report that must keep these candles from ``main`` (None: publish)."""
        if self.invariants is not None and not self.invariants.success:
            return self.invariants
        if (
            self.reconciliation is not None
            and not self.reconciliation.success
            and self.reconciliation_gating
        ):
            return self.reconciliation
        return None

    @property
    def passed(self) -> bool:
        return self.blocking is None

    @property
    def reports(self) -> list[ValidationReport]:
        return [r for r in (self.invariants, self.reconciliation) if r is not None]


@dataclass
class PipelineResult:
    run: jobs.RunResult
    validation: Validation
    main_before: int | None
    main_after: int | None

    @property
    def published(self) -> bool:
        return self.main_after != self.main_before


def tables_for(settings: Settings) -> Tables:
    """Spark names of the tables in the configured catalog and namespace."""
    return Tables(settings.catalog_name, settings.namespace)


def generate(
    spark: SparkSession,
    settings: Settings,
    tf: Timeframe,
    *,
    now: datetime | None = None,
    lookback: timedelta | None = None,
    window_range: jobs.Range | None = None,
) -> jobs.RunResult:
    """Recompute into the audit branch: the lookback run, or one backfill chunk if given."""
    tables = tables_for(settings)
    wap.start_audit(spark, tables.candles(tf))
    if window_range is not None:
        return jobs.recompute(spark, tables, tf, window_range, branch=wap.AUDIT_BRANCH)
    return jobs.refresh_candles(
        spark, tables, tf, now=now, lookback=lookback, branch=wap.AUDIT_BRANCH
    )


def validate(
    spark: SparkSession, settings: Settings, tf: Timeframe, run: jobs.RunResult
) -> Validation:
    """Run the checkpoints on the windows ``run`` wrote (on the audit branch).

    Returns the outcome without raising; :func:`require_valid` turns a failure into an error.
    Reconciliation gates publication only when the smaller timeframe has processed the very
    same trades (equal watermarks); otherwise its candles may legitimately lag, and a mismatch
    is reported in the data docs and the notes but does not block.
    """
    validation = Validation()
    if not run.written:
        validation.notes.append("nothing written: main already holds these candles")
        return validation
    tables = tables_for(settings)
    engine = settings.validation_engine
    first, last = run.ranges[0].start, run.ranges[-1].end
    run_name = (
        f"{tf} {first:%Y-%m-%d %H:%M}..{last:%Y-%m-%d %H:%M} UTC, "
        f"{run.windows_recomputed} windows, trades snapshot {run.trades_snapshot_id}"
    )
    max_rows = settings.validation_pandas_max_rows
    frame = invariant_frame(spark, tables, tf, run.ranges, wap.AUDIT_BRANCH)
    suite = invariant_suite(tf)
    validation.invariants = run_checkpoint(
        settings.gx_root,
        suite.name,
        suite,
        frame,
        engine=engine,
        pandas_max_rows=max_rows,
        run_name=run_name,
    )
    source = rollup_source(tf)
    rollup_suite = reconciliation_suite(tf)
    rolled = reconciliation_frame(spark, tables, tf, run.ranges, wap.AUDIT_BRANCH)
    if source is not None and rollup_suite is not None and rolled is not None:
        validation.reconciliation = run_checkpoint(
            settings.gx_root,
            rollup_suite.name,
            rollup_suite,
            rolled,
            engine=engine,
            pandas_max_rows=max_rows,
            run_name=run_name,
        )
        source_watermark = jobs.watermark(spark, tables.candles(source))
        validation.reconciliation_gating = source_watermark == run.watermark
        if not validation.reconciliation.success and not validation.reconciliation_gating:
            validation.warnings.append(
                f"{tf} differs from the rollup of {source}, whose published candles reflect "
                f"trades snapshot {source_watermark} while this run read {run.watermark}: "
                f"not blocking; run {source} first to reconcile"
            )
    return validation


def require_valid(validation: Validation) -> None:
    """Raise :class:`ValidationFailed` for the first gating report that failed."""
    if validation.blocking is not None:
        raise ValidationFailed(validation.blocking)


def reject_if_invalid(
    spark: SparkSession,
    settings: Settings,
    tf: Timeframe,
    validation: Validation,
    logger: logging.Logger | logging.LoggerAdapter[Any] = log,
) -> None:
    """Keep failed candles under a ``rejected-*`` tag and raise; ``main`` stays untouched."""
    if validation.passed:
        return
    tag = wap.keep_rejected(spark, tables_for(settings).candles(tf))
    logger.error("%s: candles rejected, main unchanged; kept as tag %s", tf, tag)
    require_valid(validation)


def publish(spark: SparkSession, settings: Settings, tf: Timeframe) -> int | None:
    """Fast-forward ``main`` of the timeframe's table to the audit branch."""
    return wap.publish(spark, tables_for(settings).candles(tf))


def run_timeframe(
    spark: SparkSession,
    settings: Settings,
    tf: Timeframe,
    *,
    now: datetime | None = None,
    lookback: timedelta | None = None,
    window_range: jobs.Range | None = None,
) -> PipelineResult:
    """generate -> validate -> publish; raises ValidationFailed with ``main`` untouched."""
    table = tables_for(settings).candles(tf)
    main_before = jobs.main_snapshot_id(spark, table)
    run = generate(spark, settings, tf, now=now, lookback=lookback, window_range=window_range)
    validation = validate(spark, settings, tf, run)
    reject_if_invalid(spark, settings, tf, validation)
    main_after = publish(spark, settings, tf)
    return PipelineResult(run, validation, main_before, main_after)


def backfill_timeframe(
    spark: SparkSession,
    settings: Settings,
    tf: Timeframe,
    start: datetime,
    end: datetime,
    *,
    chunk: timedelta = timedelta(days=1),
) -> Iterator[PipelineResult]:
    """Backfill [start, end) chunk by chunk, each chunk audited and published on its own."""
    for window_range in jobs.backfill_ranges(tf, start, end, chunk):
        yield run_timeframe(spark, settings, tf, window_range=window_range)
