"""What a checkpoint found: the report the caller gets, one outcome per expectation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ExpectationOutcome:
    suite: str
    expectation: str
    invariant: str
    success: bool
    unexpected_count: int = 0
    examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        shown = "; ".join(self.examples) if self.examples else "no row sample"
        return (
            f"{self.suite}: {self.expectation} ({self.invariant}) failed on "
            f"{self.unexpected_count} row(s), e.g. {shown}"
        )


@dataclass
class ValidationReport:
    """What one checkpoint found."""

    checkpoint: str
    success: bool
    rows: int
    engine: str
    outcomes: list[ExpectationOutcome]
    data_docs: Path | None
    result_page: Path | None = None  # this validation's own page in the data docs
    ranges: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # column -> (min, max) seen

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def evaluated(self) -> int:
        return len(self.outcomes)

    @property
    def passed_count(self) -> int:
        return self.evaluated - len(self.failures)

    def describe_failures(self) -> str:
        lines = [
            f"validation {self.checkpoint} failed: {len(self.failures)} of {self.evaluated} "
            f"expectations on {self.rows} candle row(s)"
        ]
        lines += [f"  - {o.describe()}" for o in self.failures]
        if self.result_page or self.data_docs:
            lines.append(f"  data docs: {self.result_page or self.data_docs}")
        return "\n".join(lines)


def outcomes_of(suite: str, run_results: dict[Any, Any], examples: int) -> list[ExpectationOutcome]:
    """One outcome per expectation of the stored GX results, with up to ``examples`` rows."""
    outcomes: list[ExpectationOutcome] = []
    for suite_result in run_results.values():
        for r in suite_result.results:
            config = r.expectation_config
            assert config is not None
            outcomes.append(
                ExpectationOutcome(
                    suite=suite,
                    expectation=config.type,
                    invariant=str((config.meta or {}).get("invariant", config.kwargs)),
                    success=bool(r.success),
                    unexpected_count=int(r.result.get("unexpected_count") or 0),
                    examples=_examples(r.result, r.exception_info, examples),
                )
            )
    return outcomes


def _examples(result: dict[str, Any], exception_info: Any, limit: int) -> list[str]:
    """A few offending rows: their key and the unexpected values GX reports."""
    if isinstance(exception_info, dict) and exception_info.get("raised_exception"):
        return [f"GX raised: {exception_info.get('exception_message')}"]
    indexed = result.get("partial_unexpected_index_list") or []
    if indexed:
        return [_row(item) for item in indexed[:limit]]
    values = result.get("partial_unexpected_list") or []
    return [repr(v) for v in values[:limit]]


def _row(item: Any) -> str:
    if isinstance(item, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in item.items()) + "}"
    return repr(item)
