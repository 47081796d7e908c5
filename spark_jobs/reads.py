"""Filtered reads of the project's tables: a branch, and the rows of some time ranges."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from core.ranges import Range


def on_branch(table: str, branch: str | None) -> str:
    """The identifier that reads or writes ``branch`` of ``table`` (``main`` when None)."""
    return f"{table}.branch_{branch}" if branch else table


def in_ranges(column: Column, ranges: Sequence[Range]) -> Column:
    """True where ``column`` falls in one of the half-open ranges."""
    terms = [(column >= F.lit(r.start)) & (column < F.lit(r.end)) for r in ranges]
    return _any(terms) if terms else F.lit(False)


def overlapping(start: Column, end: Column, ranges: Sequence[Range]) -> Column:
    """True where the half-open interval [start, end) overlaps one of the ranges."""
    terms = [(start < F.lit(r.end)) & (end > F.lit(r.start)) for r in ranges]
    return _any(terms) if terms else F.lit(False)


def _any(terms: list[Column]) -> Column:
    """OR of the terms as a balanced tree: a chain of 64 ORs nests deeper than the Spark
    Connect protocol decodes (its protobuf depth limit is 100)."""
    if len(terms) == 1:
        return terms[0]
    middle = len(terms) // 2
    return _any(terms[:middle]) | _any(terms[middle:])


def read_candles(
    spark: SparkSession,
    table: str,
    ranges: Sequence[Range],
    branch: str | None = None,
    snapshot: int | None = None,
) -> DataFrame:
    """Candles of ``table`` (on ``branch``, default main; or as of ``snapshot``, which may be
    a branch's) whose window starts in ``ranges``."""
    reader = spark.read
    if snapshot is not None:
        reader = reader.option("versionAsOf", snapshot)
    name = table if snapshot is not None else on_branch(table, branch)
    return reader.table(name).where(in_ranges(F.col("window_start"), ranges))
