"""What a run reports: its validation, its result and the metrics a flow run records
(:mod:`flows.pipeline` produces them; the flows, the CLI and the backfill report them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.timeframes import Timeframe
from expectations.report import ValidationReport
from spark_jobs import jobs, revisions


@dataclass
class Validation:
    """The validation of one run: invariants, and reconciliation where there is a rollup."""

    invariants: ValidationReport | None = None
    reconciliation: ValidationReport | None = None
    reconciliation_gating: bool = False
    trades_sample: ValidationReport | None = None
    """Rolled-up candles against a sample of windows recomputed from the trades (blocking)."""
    gaps: ValidationReport | None = None
    """The gap report's check (never blocking)."""
    gap_rows: list[dict[str, Any]] = field(default_factory=list)
    """Per exchange, symbol and local trading date: windows spanned, with trades, without."""
    notes: list[str] = field(default_factory=list)  # informational
    warnings: list[str] = field(default_factory=list)  # a non-gating check failed

    @property
    def blocking(self) -> ValidationReport | None:
        """The failed report that must keep these candles from ``main`` (None: publish)."""
        if self.invariants is not None and not self.invariants.success:
            return self.invariants
        if self.trades_sample is not None and not self.trades_sample.success:
            return self.trades_sample
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
        return [r for r in (*self.checks, self.gaps) if r is not None]

    @property
    def checks(self) -> list[ValidationReport]:
        """The reports of the candles' correctness (the gap report describes the feed)."""
        found = (self.invariants, self.trades_sample, self.reconciliation)
        return [r for r in found if r is not None]

    @property
    def empty_windows(self) -> int:
        """Windows without trades the gap report found."""
        return sum(int(r["empty_windows"]) for r in self.gap_rows)


@dataclass
class PipelineResult:
    run: jobs.RunResult
    validation: Validation
    main_before: int | None
    main_after: int | None
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each step, by task name."""

    @property
    def published(self) -> bool:
        return self.main_after != self.main_before


# What a run reports from its candle job (RunResult's fields that are counts and snapshot ids).
_RUN_FIGURES = (
    "trades_read",
    "new_trades",
    "late_trades",
    "pending_trades",
    "windows_recomputed",
    "inserted",
    "updated",
    "unchanged",
    "revised",
    "trades_snapshot_id",
)


@dataclass(frozen=True)
class RunMetrics:
    """What a flow run reports: its artifact's rows, and what the CLI prints."""

    timeframe: str
    run: jobs.RunResult | None = None
    """The candle job's result; None when the run was skipped."""
    skipped: str | None = None
    """Why the run did nothing (a later scheduled run covers it)."""
    expectations_passed: int = 0
    expectations_evaluated: int = 0
    published: bool = False
    main_snapshot_id: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each step, by task name."""
    empty_windows: int = 0
    """Windows without trades in the gap report (a warning, never blocking)."""

    @classmethod
    def of(cls, tf: Timeframe, result: PipelineResult) -> RunMetrics:
        reports = result.validation.checks
        return cls(
            timeframe=tf.name,
            run=result.run,
            expectations_passed=sum(r.passed_count for r in reports),
            expectations_evaluated=sum(r.evaluated for r in reports),
            published=result.published,
            main_snapshot_id=result.main_after,
            seconds=dict(result.seconds),
            empty_windows=result.validation.empty_windows,
        )

    def rows(self) -> list[dict[str, str]]:
        """(metric, value) rows for a table artifact; step times as ``<task>_s``."""
        values: dict[str, Any] = {"timeframe": self.timeframe}
        if self.run is not None:
            values.update({name: getattr(self.run, name) for name in _RUN_FIGURES})
            values["revised_windows"] = revisions.describe_revisions(
                self.run.revisions, self.run.revised
            )
        values.update(
            expectations_passed=self.expectations_passed,
            expectations_evaluated=self.expectations_evaluated,
            published=self.published,
            main_snapshot_id=self.main_snapshot_id,
            empty_windows=self.empty_windows,
        )
        values.update({f"{step}_s": s for step, s in self.seconds.items()})
        return [{"metric": k, "value": str(v)} for k, v in values.items()]
