"""Evaluate a suite's expectations over a Spark DataFrame in one aggregation.

GX's Spark engine runs every expectation as Spark jobs of its own (row count, unexpected count,
sample rows, index list): measured at 53-69 s for the 1m suite over 400,000 cached candles,
most of a backfill chunk's time, and GX's pandas engine first collects every candle (39 s).
Here each expectation of the suite becomes a Spark condition on the same row, and one
aggregation counts the unexpected and missing rows of all of them; only a failed expectation
costs another job, which fetches its sample rows. The outcome is stored as GX validation
results of the same suite, so results, data docs and the report read as GX's own.

Only the expectation types the OHLCV suites use are translated, each with GX's semantics for
them (null values are skipped by value checks; a pair check skips a row with either value
missing; a non-unique key makes every row of its group unexpected).
``tests/test_expectations.py`` holds the counts equal to GX's own engines on frames that break
every invariant. A suite with any other type returns None here and GX's engine validates it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from great_expectations.core import ExpectationValidationResult
from great_expectations.expectations.expectation import Expectation
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F


@dataclass(frozen=True)
class Condition:
    """One expectation as conditions on a row: ``unexpected`` (a checked row that fails) and
    ``missing`` (a row the expectation skips; None where it skips none)."""

    unexpected: Column
    missing: Column | None
    columns: tuple[str, ...]  # shown with the key of a sample row
    value: Column  # what GX lists as the unexpected value of a row


def _between(column: Column, kwargs: dict[str, Any]) -> Column:
    inside = F.lit(True)
    low, high = (_bound(kwargs.get(k)) for k in ("min_value", "max_value"))
    if low is not None:
        inside &= column > low if kwargs.get("strict_min") else column >= low
    if high is not None:
        inside &= column < high if kwargs.get("strict_max") else column <= high
    return ~inside


def _bound(value: Any) -> Column | None:
    """A bound as a literal. GX stores bounds as floats, so a decimal column would be compared
    as a double, each value converted through its text (slow on Java 17); a bound of 0 is the
    integer 0 instead: a sign test, exact for every numeric type and the same verdict as the
    comparison with 0.0 (a nonzero number never becomes a double of the other sign or 0)."""
    if value is None:
        return None
    return F.lit(0) if value == 0 and not isinstance(value, bool) else F.lit(value)


def condition(expectation: Expectation, duplicated: Column) -> Condition | None:
    """The expectation as a :class:`Condition`, or None for a type not translated here (and
    for any option that changes GX's semantics, such as ``mostly`` or a row condition).
    ``duplicated`` marks a row whose compound key occurs more than once."""
    kwargs = expectation.configuration.kwargs
    if any(kwargs.get(k) not in (None, 1, 1.0) for k in ("mostly",)) or kwargs.get("row_condition"):
        return None
    kind = expectation.expectation_type
    if kind == "expect_column_values_to_not_be_null":
        c = F.col(kwargs["column"])
        return Condition(c.isNull(), None, (kwargs["column"],), c)
    if kind in ("expect_column_values_to_be_in_set", "expect_column_values_to_be_between"):
        c = F.col(kwargs["column"])
        in_set = kind.endswith("in_set")
        failing = ~c.isin(*kwargs["value_set"]) if in_set else _between(c, kwargs)
        return Condition(c.isNotNull() & failing, c.isNull(), (kwargs["column"],), c)
    if kind in (
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_column_pair_values_to_be_equal",
    ):
        if kwargs.get("ignore_row_if") != "either_value_is_missing":
            return None
        a, b = F.col(kwargs["column_A"]), F.col(kwargs["column_B"])
        missing = a.isNull() | b.isNull()
        if kind.endswith("to_be_equal"):
            failing = a != b
        else:
            failing = ~(a >= b) if kwargs.get("or_equal") else ~(a > b)
        columns = (kwargs["column_A"], kwargs["column_B"])
        return Condition(~missing & failing, missing, columns, F.array(a, b))
    if kind == "expect_compound_columns_to_be_unique":
        if kwargs.get("ignore_row_if", "all_values_are_missing") != "all_values_are_missing":
            return None
        cs = [F.col(c) for c in kwargs["column_list"]]
        all_missing = F.lit(True)
        for c in cs:
            all_missing &= c.isNull()
        value = F.struct(*cs)
        return Condition(
            ~all_missing & duplicated, all_missing, tuple(kwargs["column_list"]), value
        )
    return None


UNIQUE = "expect_compound_columns_to_be_unique"
DUPLICATED = "_onepass_duplicated"
"""The flag column of a row whose compound key occurs more than once (for sample rows)."""


def _unique_key(expectations: Sequence[Expectation]) -> list[str] | None:
    """The one compound key the suite expects unique (None: no such expectation)."""
    lists = [
        e.configuration.kwargs["column_list"] for e in expectations if e.expectation_type == UNIQUE
    ]
    return list(lists[0]) if len(lists) == 1 else None


@dataclass(frozen=True)
class Tally:
    """A suite translated into conditions, to be counted by any aggregation: :meth:`counts`
    names the count of each expectation's unexpected (``<prefix>u<i>``) and missing
    (``<prefix>m<i>``) rows; :meth:`results` turns the counted values into GX results. The
    uniqueness expectation's unexpected rows are counted by the caller, per key
    (:attr:`unique`, its name :meth:`duplicated_name`)."""

    expectations: tuple[Expectation, ...]
    checks: tuple[Condition, ...]
    prefix: str
    key: tuple[str, ...] | None

    @classmethod
    def of(cls, expectations: Sequence[Expectation], prefix: str = "") -> Tally | None:
        """The suite's tally; None when some expectation is not translated here."""
        key = _unique_key(expectations)
        if sum(e.expectation_type == UNIQUE for e in expectations) > (1 if key else 0):
            return None
        conditions = [condition(e, F.col(DUPLICATED)) for e in expectations]
        if any(c is None for c in conditions):
            return None
        checks = tuple(c for c in conditions if c is not None)
        return cls(tuple(expectations), checks, prefix, tuple(key) if key else None)

    @property
    def unique(self) -> int | None:
        """The index of the uniqueness expectation (None: the suite has none)."""
        kinds = [e.expectation_type for e in self.expectations]
        return kinds.index(UNIQUE) if UNIQUE in kinds else None

    def duplicated_name(self) -> str:
        return f"{self.prefix}u{self.unique}"

    def counts(self, where: Column | None = None) -> dict[str, Column]:
        """``count_if`` of every condition (on rows where ``where`` holds, if given)."""
        counted: dict[str, Column] = {}
        for i, c in enumerate(self.checks):
            if i != self.unique:
                counted[f"{self.prefix}u{i}"] = F.count_if(_only(where, c.unexpected))
            if c.missing is not None:
                counted[f"{self.prefix}m{i}"] = F.count_if(_only(where, c.missing))
        return counted

    def results(
        self,
        rows: int,
        counted: Mapping[str, Any],
        samples: Callable[[Condition], list[dict[str, Any]]],
        key_columns: Sequence[str],
    ) -> list[ExpectationValidationResult]:
        """One GX result per expectation from the counted values (``samples`` fetches the
        sample rows of a condition; called only for one that failed)."""
        results = []
        for i, (e, c) in enumerate(zip(self.expectations, self.checks, strict=True)):
            unexpected = int(counted.get(f"{self.prefix}u{i}") or 0)
            missing = int(counted.get(f"{self.prefix}m{i}") or 0) if c.missing is not None else None
            found = samples(c) if unexpected else []
            results.append(_result(e, c, rows, unexpected, missing, found, list(key_columns)))
        return results


def range_columns(expectations: Sequence[Expectation], columns: Sequence[str]) -> list[str]:
    """The range-checked columns among ``columns``: their min and max tell what "0%
    unexpected" does not."""
    checked = {
        e.configuration.kwargs["column"]
        for e in expectations
        if e.expectation_type == "expect_column_values_to_be_between"
    }
    return sorted(c for c in checked if c in columns)


def _only(where: Column | None, condition: Column) -> Column:
    return condition if where is None else where & condition


def all_missing(key: Sequence[str]) -> Column:
    """True where every column of the key is null (GX's uniqueness check skips such rows)."""
    missing = F.lit(True)
    for column in key:
        missing &= F.col(column).isNull()
    return missing


def duplicated_rows(frame: DataFrame, tally: Tally) -> DataFrame:
    """One row: how many rows of ``frame`` share their compound key with another (GX counts
    every row of a duplicated key, and skips rows whose key columns are all missing). The
    keys alone are shuffled: a hash aggregation, no sort."""
    assert tally.key is not None
    per_key = frame.groupBy(*tally.key).agg(F.count(F.lit(1)).alias("_n"))
    return per_key.where((F.col("_n") > 1) & ~all_missing(tally.key)).agg(
        F.coalesce(F.sum("_n"), F.lit(0)).alias(tally.duplicated_name())
    )


def marked(frame: DataFrame, key: Sequence[str] | None) -> DataFrame:
    """``frame`` with the :data:`DUPLICATED` flag its uniqueness condition reads."""
    if key is None:
        return frame
    return frame.withColumn(DUPLICATED, F.count(F.lit(1)).over(Window.partitionBy(*key)) > 1)


def samples(
    frame: DataFrame, key_columns: Sequence[str], limit: int
) -> Callable[[Condition], list[dict[str, Any]]]:
    """Fetches up to ``limit`` unexpected rows of a condition from ``frame`` (marked)."""
    return lambda c: _samples(frame, c, key_columns, limit)


Evaluated = tuple[int, list[ExpectationValidationResult], dict[str, tuple[Any, Any]]]
"""A suite's evaluation: rows, one GX result per expectation, (min, max) of range columns."""


def evaluate(
    frame: DataFrame,
    expectations: Sequence[Expectation],
    key_columns: Sequence[str],
    examples: int,
    range_columns: Sequence[str] = (),
) -> Evaluated | None:
    """Rows, one GX result per expectation and the (min, max) of ``range_columns``; None when
    some expectation is not translated here.

    One query: a global aggregation of every condition, joined with the count of rows whose
    compound key is duplicated.
    """
    tally = Tally.of(expectations)
    if tally is None:
        return None
    ranges = {f"min_{c}": F.min(c) for c in range_columns} | {
        f"max_{c}": F.max(c) for c in range_columns
    }
    counts = {"rows": F.count(F.lit(1))} | tally.counts() | ranges
    totals = frame.agg(*[v.alias(k) for k, v in counts.items()])
    if tally.key is not None:
        totals = totals.crossJoin(duplicated_rows(frame, tally))
    row = totals.first()
    assert row is not None
    rows = int(row["rows"] or 0)
    found = samples(marked(frame, tally.key), key_columns, examples)
    results = tally.results(rows, row.asDict(), found, key_columns)
    return rows, results, {c: (row[f"min_{c}"], row[f"max_{c}"]) for c in range_columns}


def _samples(
    frame: DataFrame, c: Condition, key_columns: Sequence[str], limit: int
) -> list[dict[str, Any]]:
    shown = list(dict.fromkeys([*key_columns, *c.columns]))
    picked = frame.where(c.unexpected).select(*shown, c.value.alias("_onepass_value"))
    return [r.asDict(recursive=True) for r in picked.limit(limit).collect()]


def _plain(value: Any) -> Any:
    """A sampled value as GX's JSON results hold it."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | str):
        return value
    return float(value)  # Decimal, as GX's Spark engine reports it


def _result(
    expectation: Expectation,
    c: Condition,
    rows: int,
    unexpected: int,
    missing: int | None,
    samples: list[dict[str, Any]],
    key_columns: list[str],
) -> ExpectationValidationResult:
    values = [_plain(s.pop("_onepass_value")) for s in samples]
    counted: dict[str, int] = {}
    for v in values:
        counted[repr(v)] = counted.get(repr(v), 0) + 1
    first = {repr(v): v for v in reversed(values)}
    result: dict[str, Any] = {
        "element_count": rows,
        "unexpected_count": unexpected,
        "unexpected_percent": _percent(unexpected, rows - (missing or 0)),
        "partial_unexpected_list": values,
        "partial_unexpected_index_list": [_plain(s) for s in samples],
        "partial_unexpected_counts": [
            {"value": first[k], "count": n}
            for k, n in sorted(counted.items(), key=lambda kv: -kv[1])
        ],
        "unexpected_index_column_names": key_columns,
    }
    if missing is not None:
        result |= {
            "missing_count": missing,
            "missing_percent": _percent(missing, rows),
            "unexpected_percent_nonmissing": _percent(unexpected, rows - missing),
            "unexpected_percent_total": _percent(unexpected, rows),
        }
    return ExpectationValidationResult(
        success=unexpected == 0,
        expectation_config=expectation.configuration,
        result=result,
        exception_info={
            "raised_exception": False,
            "exception_message": None,
            "exception_traceback": None,
        },
    )


def _percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None
