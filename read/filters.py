"""The query's filter, written once as terms and translated for each reader.

Window bounds, symbols and exchange become an Iceberg expression (PyIceberg prunes partitions
and files with it), an Arrow expression (the local files' fast reader) or a Spark column.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    In,
    LessThan,
    Reference,
)
from pyiceberg.expressions.literals import literal

from read.query import CandleQuery

if TYPE_CHECKING:
    import pyarrow.compute as pc
    from pyspark.sql import Column


@dataclass(frozen=True)
class Term:
    """``column op value``; ``in`` takes a sequence of values."""

    column: str
    op: Literal[">=", "<", "==", "in"]
    value: Any


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    "<": operator.lt,
    "==": operator.eq,
}
_ICEBERG_COMPARE: dict[str, Callable[..., BooleanExpression]] = {
    ">=": GreaterThanOrEqual,
    "<": LessThan,
    "==": EqualTo,
}


def query_terms(query: CandleQuery) -> list[Term]:
    """The query's filter: window bounds, symbols, exchange."""
    terms: list[Term] = []
    if query.start is not None:
        terms.append(Term("window_start", ">=", query.start))
    if query.end is not None:
        terms.append(Term("window_start", "<", query.end))
    if query.symbols:
        terms.append(Term("symbol", "in", query.symbols))
    if query.exchange is not None:
        terms.append(Term("exchange", "==", query.exchange))
    return terms


def iceberg_filter(terms: Sequence[Term]) -> BooleanExpression:
    """``terms`` as an Iceberg expression (timestamps as ISO-8601 literals)."""
    expression: BooleanExpression = AlwaysTrue()
    for term in terms:
        reference = Reference(term.column)
        if term.op == "in":
            part: BooleanExpression = In(term=reference, values={literal(v) for v in term.value})
        else:
            value = term.value.isoformat() if isinstance(term.value, datetime) else term.value
            part = _ICEBERG_COMPARE[term.op](term=reference, value=literal(value))
        expression = And(expression, part)
    return expression


def row_filter(query: CandleQuery) -> BooleanExpression:
    """The query as an Iceberg expression: window bounds prune partitions, symbols files."""
    return iceberg_filter(query_terms(query))


def arrow_filter(query: CandleQuery) -> pc.Expression:
    """:func:`row_filter` as an Arrow expression (the same terms)."""
    import pyarrow.compute as pc

    utc_us = pa.timestamp("us", tz="UTC")
    return _conjunction(
        query_terms(query),
        pc.scalar(True),
        pc.field,
        lambda v: pa.scalar(v, utc_us) if isinstance(v, datetime) else v,
    )


def spark_filter(query: CandleQuery) -> Column:
    """The query's filter as a Spark column (window bounds, symbols, exchange)."""
    from pyspark.sql import functions as F

    return _conjunction(query_terms(query), F.lit(True), F.col, F.lit)


def _conjunction(
    terms: Sequence[Term],
    true: Any,
    column: Callable[[str], Any],
    value: Callable[[Any], Any],
) -> Any:
    """``true & term & ...`` for Arrow or Spark, whose columns share ``isin`` and operators."""
    expression = true
    for term in terms:
        field = column(term.column)
        if term.op == "in":
            expression = expression & field.isin(list(term.value))
        else:
            expression = expression & _COMPARE[term.op](field, value(term.value))
    return expression
