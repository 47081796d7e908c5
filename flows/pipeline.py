"""One timeframe's run as three steps: generate -> validate -> publish (write-audit-publish).

- generate: reset the audit branch to ``main``, recompute the affected windows and MERGE what
  changed into the audit branch (with the late-trade watermark in its snapshot summary);
- validate: the GX invariant suite on exactly the windows written, read from the audit branch,
  plus (5m and longer) reconciliation with the next smaller timeframe's published candles;
- publish: fast-forward ``main`` to the audit branch, then record the published candles the run
  revised (late trades) in ``candle_revisions``.

A failed validation raises :class:`ValidationFailed`, leaves ``main`` exactly as it was (its
snapshot, so also its watermark: the next run recomputes the same trades) and tags the
rejected snapshot ``rejected-<time>`` for inspection.

:func:`run_pipeline` is the one implementation of that sequence. The Prefect flows run it with
:class:`Steps` whose methods are their tasks (retries, timeouts, logs, artifacts); a notebook or
a test runs it with the plain :class:`Steps`, which call the step functions directly.
What it returns and reports is in :mod:`flows.results`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from core.calendars import is_daily
from core.ranges import Range
from core.tables import Tables
from core.timeframes import Timeframe, rollup_source
from expectations import onepass, onescan
from expectations.data_docs import build_index
from expectations.frames import (
    GAP_COLUMNS,
    gap_counts,
    gap_order,
    gap_rows,
    reconciliation_frame,
    trades_sample_frame,
    with_window_columns,
)
from expectations.report import ValidationReport
from expectations.suites import (
    gap_suite,
    invariant_suite,
    reconciliation_suite,
    trades_sample_suite,
)
from expectations.validation import (
    ValidationFailed,
    collect,
    record_checkpoint,
    run_checkpoint,
    validates_in_pandas,
)
from flows.results import PipelineResult, Validation
from settings import Settings
from spark_jobs import jobs, plan, revisions, wap
from spark_jobs.reads import read_candles
from spark_jobs.rollup import ChunkAggregate, TradesSample
from spark_jobs.snapshots import (
    branch_snapshot_id,
    main_snapshot_id,
    only_compacted_since,
    watermark,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """What one run recomputes: the lookback ending at ``now``, or one backfill chunk.

    A backfill chunk may pin the ``trades`` snapshot it reads (``trades_snapshot_id``); the
    last chunk of a backfill says which range the whole backfill ``completes`` (see
    :func:`spark_jobs.jobs.recompute`).
    """

    now: datetime | None = None
    lookback: timedelta | None = None
    window_range: Range | None = None
    trades_snapshot_id: int | None = None
    completes: Range | None = None
    stats: plan.TradeStats | None = None
    """The chunk's trades, when the backfill counted them already (:func:`plan.plan_chunks`)."""
    aggregate: ChunkAggregate | None = None
    """The chunk's trades aggregated once for several timeframes (a backfill of them all)."""


def tables_for(settings: Settings) -> Tables:
    """Spark names of the tables in the configured catalog and namespace."""
    return Tables(settings.catalog_name, settings.namespace)


def generate(
    spark: SparkSession, settings: Settings, tf: Timeframe, request: RunRequest
) -> jobs.RunResult:
    """Recompute into the audit branch: the lookback run, or one backfill chunk if given."""
    tables = tables_for(settings)
    wap.start_audit(spark, tables.candles(tf))
    if request.window_range is not None:
        return jobs.recompute(
            spark,
            tables,
            tf,
            request.window_range,
            branch=wap.AUDIT_BRANCH,
            trades_snapshot=request.trades_snapshot_id,
            completes=request.completes,
            stats=request.stats,
            market=settings.market(),
            source=request.aggregate,
        )
    return jobs.refresh_candles(
        spark,
        tables,
        tf,
        now=request.now,
        lookback=request.lookback,
        branch=wap.AUDIT_BRANCH,
        max_new_trades=settings.max_new_trades_per_run,
        market=settings.market(),
    )


def validate(
    spark: SparkSession, settings: Settings, tf: Timeframe, run: jobs.RunResult
) -> Validation:
    """Run the checkpoints on the windows ``run`` wrote (on the audit branch).

    Returns the outcome without raising; :func:`reject_if_invalid` turns a failure into an
    error. Reconciliation gates publication only when the smaller timeframe has processed the
    very same trades (equal, recorded watermarks); otherwise its candles may legitimately lag,
    and a mismatch is reported in the data docs and the notes but does not block.
    """
    validation = Validation()
    if not run.written:
        validation.notes.append("nothing written: main already holds these candles")
        return validation
    tables = tables_for(settings)
    first, last = run.ranges[0].start, run.ranges[-1].end
    windows = f"{first:%Y-%m-%d %H:%M}..{last:%Y-%m-%d %H:%M} UTC, {run.windows_recomputed} windows"
    run_name = f"{tf} {windows}, trades snapshot {run.trades_snapshot_id}"
    asset = f"{tables.candles(tf)} ({wap.AUDIT_BRANCH} branch), {windows}"

    # The candles the run computed: enough to choose the engine without counting them again.
    computed = run.inserted + run.updated + run.unchanged

    options: dict[str, Any] = {
        "web_cache": settings.web_cache_dir,
        "run_name": run_name,
        "asset": asset,
        "keep_results": settings.validation_results_kept,
        "build_index": False,  # once, below, for all of the run's checkpoints
    }

    def check(suite: Any, frame: Any) -> ValidationReport:
        return run_checkpoint(
            settings.gx_root,
            suite.name,
            suite,
            frame,
            engine=settings.validation_engine,
            pandas_max_rows=settings.validation_pandas_max_rows,
            rows_hint=computed,
            **options,
        )

    def record(suite: Any, evaluated: onepass.Evaluated) -> ValidationReport:
        return record_checkpoint(settings.gx_root, suite.name, suite, evaluated, **options)

    # The audit branch as it is now (whatever wrote it last): every check reads that snapshot,
    # pinned, so all of them see the same rows. Not cached: building Spark's in-memory cache
    # of 425,000 1m candles took 4.5 s, reading their files again about 0.5 s.
    table = tables.candles(tf)
    head = branch_snapshot_id(spark, table, wap.AUDIT_BRANCH)
    stored = read_candles(spark, table, run.ranges, wap.AUDIT_BRANCH, head)
    in_pandas = validates_in_pandas(
        settings.validation_engine, computed, settings.validation_pandas_max_rows
    )
    try:
        scanned = None
        if not in_pandas and settings.validation_engine in ("auto", "onepass"):
            # Every check in one query (expectations.onescan).
            scanned = onescan.scan(
                spark,
                tables,
                tf,
                run.ranges,
                stored,
                settings.market().calendars,
                _trades_sample(settings, run),
            )
        if scanned is not None:
            validation.invariants = record(invariant_suite(tf), scanned.invariants)
            if scanned.trades_sample is not None:
                validation.trades_sample = record(trades_sample_suite(tf), scanned.trades_sample)
            if scanned.reconciliation is not None:
                validation.reconciliation = record(reconciliation_suite(tf), scanned.reconciliation)
            day_rows = scanned.gap_rows
        else:
            day_rows = _checks(spark, settings, tf, run, validation, stored, in_pandas, check)
        _reconciliation_gating(spark, settings, tf, run, validation)
        if day_rows is not None:
            validation.gap_rows = sorted(day_rows, key=gap_order)
            # Validated from these rows (a few per symbol and day), not recomputed.
            validation.gaps = check(
                gap_suite(tf), pd.DataFrame(validation.gap_rows, columns=GAP_COLUMNS)
            )
            empty = validation.empty_windows
            if empty:
                days = sum(1 for r in validation.gap_rows if r["empty_windows"])
                validation.warnings.append(
                    f"{tf}: {empty} window(s) without trades on {days} symbol-day(s) (gap "
                    "report; not blocking)"
                )
    finally:  # (the results stored before a check that failed to run are listed too)
        build_index(settings.gx_root, settings.web_cache_dir, invariant_suite(tf).name)
    return validation


def _trades_sample(settings: Settings, run: jobs.RunResult) -> TradesSample | None:
    """The chunk's trades sample, for candles rolled up from its 1m state (else None)."""
    if run.source is None:
        return None
    return run.source.trades_sample(
        settings.validation_sample_windows, settings.validation_sample_trades
    )


def _checks(
    spark: SparkSession,
    settings: Settings,
    tf: Timeframe,
    run: jobs.RunResult,
    validation: Validation,
    stored: DataFrame,
    in_pandas: bool,
    check: Callable[[Any, Any], ValidationReport],
) -> list[dict[str, Any]] | None:
    """The checks of :func:`validate` one by one, each a query of its own (GX's engines, or a
    collected frame); returns the gap report's rows (None for daily candles)."""
    tables = tables_for(settings)
    calendars = settings.market().calendars
    written = with_window_columns(stored, tf, calendars)
    invariants: DataFrame | pd.DataFrame = written
    if in_pandas:
        # Collected here, once: the gap report below counts the same rows without a query.
        invariants = collect(written)
    validation.invariants = check(invariant_suite(tf), invariants)
    sample = _trades_sample(settings, run)
    if sample is not None:
        validation.trades_sample = check(
            trades_sample_suite(tf), trades_sample_frame(tf, stored, sample, calendars)
        )
    rollup_suite = reconciliation_suite(tf)
    rolled = reconciliation_frame(
        spark, tables, tf, run.ranges, wap.AUDIT_BRANCH, calendars, written=stored
    )
    if rollup_suite is not None and rolled is not None:
        validation.reconciliation = check(rollup_suite, rolled)
    if isinstance(invariants, pd.DataFrame):
        return gap_rows(invariants, tf)
    gaps = None if is_daily(tf) else gap_counts(stored, tf)
    return None if gaps is None else [r.asDict() for r in gaps.collect()]


def _reconciliation_gating(
    spark: SparkSession,
    settings: Settings,
    tf: Timeframe,
    run: jobs.RunResult,
    validation: Validation,
) -> None:
    """Whether a failed reconciliation blocks: only when the smaller timeframe's published
    candles reflect the very trades this run read (else a warning)."""
    source = rollup_source(tf)
    if validation.reconciliation is None or source is None:
        return
    source_watermark = watermark(spark, tables_for(settings).candles(source))
    # Gating needs proof that both reflect the same trades: two missing watermarks (say,
    # a backfill of 5m before 1m ever ran) prove nothing.
    validation.reconciliation_gating = (
        source_watermark is not None and source_watermark == run.watermark
    )
    if not validation.reconciliation.success and not validation.reconciliation_gating:
        validation.warnings.append(
            f"{tf} differs from the rollup of {source}, whose published candles reflect "
            f"trades snapshot {source_watermark} while this run read {run.watermark}: "
            f"not blocking; run {source} first to reconcile"
        )


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
    try:
        require_valid(validation)
    except ValidationFailed as failed:
        failed.rejected_tag = tag
        raise


def publish(spark: SparkSession, settings: Settings, tf: Timeframe) -> int | None:
    """Fast-forward ``main`` of the timeframe's table to the audit branch."""
    return wap.publish(spark, tables_for(settings).candles(tf))


def record_revisions(
    spark: SparkSession, settings: Settings, tf: Timeframe, run: jobs.RunResult, published: int
) -> int:
    """Append the candles the published run revised to ``candle_revisions`` (none: no-op)."""
    if run.revisions is None:
        return 0
    return revisions.record_revisions(
        spark,
        tables_for(settings),
        tf,
        run.revisions,
        revised_at=datetime.now(UTC),
        candle_snapshot_id=published,
        trades_snapshot_id=run.trades_snapshot_id,
    )


class Steps:
    """How the three steps execute. This one calls the step functions directly.

    The methods look the step functions up when called, so replacing one (a test's fault
    injection) affects every way of running the pipeline alike.
    """

    def generate(
        self, spark: SparkSession, settings: Settings, tf: Timeframe, request: RunRequest
    ) -> jobs.RunResult:
        return generate(spark, settings, tf, request)

    def validate(
        self, spark: SparkSession, settings: Settings, tf: Timeframe, run: jobs.RunResult
    ) -> Validation:
        """Validate, and reject (tag and raise) when a gating check failed."""
        validation = validate(spark, settings, tf, run)
        reject_if_invalid(spark, settings, tf, validation)
        return validation

    def publish(self, spark: SparkSession, settings: Settings, tf: Timeframe) -> int | None:
        return publish(spark, settings, tf)

    def record_revisions(
        self,
        spark: SparkSession,
        settings: Settings,
        tf: Timeframe,
        run: jobs.RunResult,
        published: int,
    ) -> int:
        return record_revisions(spark, settings, tf, run, published)


@contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[step] = round(time.monotonic() - started, 2)


def run_pipeline(
    spark: SparkSession,
    settings: Settings,
    tf: Timeframe,
    request: RunRequest | None = None,
    steps: Steps | None = None,
) -> PipelineResult:
    """generate -> validate -> publish; raises ValidationFailed with ``main`` untouched."""
    request = request or RunRequest()
    steps = steps or Steps()
    seconds: dict[str, float] = {}
    table = tables_for(settings).candles(tf)
    main_before = base = main_snapshot_id(spark, table)
    while True:
        with _timed(seconds, "generate_candles"):
            run = steps.generate(spark, settings, tf, request)
        with _timed(seconds, "validate_candles"):
            validation = steps.validate(spark, settings, tf, run)
        try:
            with _timed(seconds, "publish_candles"):
                main_after = steps.publish(spark, settings, tf)
                if main_after is not None and main_after != base:
                    steps.record_revisions(spark, settings, tf, run, main_after)
            return PipelineResult(run, validation, base, main_after, seconds)
        except Exception:
            # Maintenance compacted main under this run, so the audit branch can no longer
            # be fast-forwarded: redo the run once on top of the compacted main.
            if base != main_before or not only_compacted_since(spark, table, base):
                raise
            log.info("%s: main was compacted during the run; running again on top of it", tf)
            base = main_snapshot_id(spark, table)
