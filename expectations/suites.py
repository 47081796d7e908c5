"""OHLCV expectation suites as code: shared invariants plus timeframe-specific window checks.

Suites are built by functions, never edited as JSON: ``invariant_suite(tf)`` for the candles a
run wrote, ``reconciliation_suite(tf)`` for their agreement with the next smaller timeframe.
Both run on frames prepared by :mod:`expectations.frames`, which adds the derived columns the
window checks need (``window_length_us``, ``window_offset_us``) and, for reconciliation, the
rolled-up columns (``rollup_<column>``).
"""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.expectations.expectation import Expectation

from core.tables import CANDLE_KEY
from core.timeframes import Timeframe, rollup_source
from spark_jobs.candles import CANDLE_COLUMNS

# Every column of a published candle must be present (computed_at is the writer's stamp),
# except the times of its first and last trade: a synthetic candle has no trade.
TRADE_TIMES = ("open_ts", "close_ts")
NOT_NULL = tuple(c for c in CANDLE_COLUMNS if c not in TRADE_TIMES)

# (greater, lesser, or_equal, invariant) pairs: column_A > column_B (or >=).
ORDERED_PAIRS = (
    ("high", "open", True, "high >= open"),
    ("high", "close", True, "high >= close"),
    ("high", "low", True, "high >= low"),
    ("open", "low", True, "low <= open"),
    ("close", "low", True, "low <= close"),
    ("vwap", "low", True, "low <= vwap"),
    ("high", "vwap", True, "vwap <= high"),
    ("open_ts", "window_start", True, "window_start <= open_ts"),
    ("close_ts", "open_ts", True, "open_ts <= close_ts"),
    ("window_end", "close_ts", False, "close_ts < window_end"),
)

# Real candles only (the frame's ``<c>_real`` columns are null for synthetic ones).
POSITIVE = ("volume", "quote_volume")

# Columns compared between a timeframe's candles and the rollup of the next smaller one.
RECONCILED = tuple(c for c in CANDLE_COLUMNS if c not in CANDLE_KEY)


def suite_name(tf: Timeframe) -> str:
    return f"ohlcv_{tf.name}_invariants"


def reconciliation_suite_name(tf: Timeframe) -> str:
    return f"ohlcv_{tf.name}_reconciliation"


def trades_sample_suite_name(tf: Timeframe) -> str:
    return f"ohlcv_{tf.name}_trades_sample"


def gap_suite_name(tf: Timeframe) -> str:
    return f"ohlcv_{tf.name}_gaps"


def _noted(expectation: Expectation, invariant: str) -> Expectation:
    expectation.notes = invariant
    expectation.meta = {"invariant": invariant}
    return expectation


def shared_invariants() -> list[Expectation]:
    """The OHLCV invariants every timeframe's candles satisfy."""
    expectations: list[Expectation] = [
        _noted(gxe.ExpectColumnValuesToNotBeNull(column=c), f"{c} is not null") for c in NOT_NULL
    ]
    expectations += [
        _noted(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=a, column_B=b, or_equal=or_equal, ignore_row_if="either_value_is_missing"
            ),
            invariant,
        )
        for a, b, or_equal, invariant in ORDERED_PAIRS
    ]
    expectations += [
        _noted(
            gxe.ExpectColumnValuesToBeInSet(column=f"{c}_present", value_set=[True]),
            f"{c} is not null",
        )
        for c in TRADE_TIMES
    ]
    expectations += [
        _noted(
            gxe.ExpectColumnValuesToBeBetween(column=f"{c}_real", min_value=0, strict_min=True),
            f"{c} > 0",
        )
        for c in POSITIVE
    ]
    expectations.append(
        _noted(
            gxe.ExpectColumnValuesToBeBetween(column="trade_count_real", min_value=1),
            "trade_count >= 1",
        )
    )
    expectations.append(
        _noted(
            gxe.ExpectColumnValuesToBeInSet(column="synthetic_is_flat", value_set=[True]),
            "a synthetic candle is flat at the previous close, with no volume and no trades",
        )
    )
    expectations.append(
        _noted(
            gxe.ExpectCompoundColumnsToBeUnique(column_list=list(CANDLE_KEY)),
            "(exchange, symbol, window_start) is unique",
        )
    )
    return expectations


def window_checks(tf: Timeframe) -> list[Expectation]:
    """Windows of ``tf`` are exactly the windows the instrument's calendar defines: aligned,
    one timeframe long (a local day: 23 to 25 hours, or the session), on their local date."""
    return [
        _noted(
            gxe.ExpectColumnValuesToBeBetween(
                column="window_length_error_us", min_value=0, max_value=0
            ),
            f"window_end - window_start = {tf.name}",
        ),
        _noted(
            gxe.ExpectColumnValuesToBeBetween(column="window_offset_us", min_value=0, max_value=0),
            f"window_start is aligned to {tf.name}",
        ),
        _noted(
            gxe.ExpectColumnValuesToBeBetween(
                column="trading_date_error_days", min_value=0, max_value=0
            ),
            "trading_date is the window's local date",
        ),
    ]


def invariant_expectations(tf: Timeframe) -> list[Expectation]:
    return shared_invariants() + window_checks(tf)


def reconciliation_expectations(tf: Timeframe) -> list[Expectation]:
    """Candles equal the rollup of the next smaller timeframe, column by column."""
    source = rollup_source(tf)
    if source is None:
        return []
    expectations: list[Expectation] = [
        _noted(
            gxe.ExpectColumnValuesToBeInSet(column=flag, value_set=[True]),
            f"every {tf.name} window has {what}",
        )
        for flag, what in (
            ("in_candles", f"a {tf.name} candle where {source.name} candles exist"),
            ("in_rollup", f"{source.name} candles where a {tf.name} candle exists"),
        )
    ]
    return expectations + _columns_equal("rollup", f"the rollup of {source.name} candles")


def _columns_equal(prefix: str, what: str) -> list[Expectation]:
    """Every reconciled column equals ``<prefix>_<column>`` (rows missing either skipped)."""
    return [
        _noted(
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A=c, column_B=f"{prefix}_{c}", ignore_row_if="either_value_is_missing"
            ),
            f"{c} equals {what}",
        )
        for c in RECONCILED
    ]


def trades_sample_expectations(tf: Timeframe) -> list[Expectation]:
    """Sampled candles equal the same windows recomputed from the trades, column by column."""
    present = _noted(
        gxe.ExpectColumnValuesToBeInSet(column="in_trades", value_set=[True]),
        f"every sampled {tf.name} window has trades",
    )
    return [present, *_columns_equal("trades", "the candle recomputed from the trades")]


def trades_sample_suite(tf: Timeframe) -> gx.ExpectationSuite:
    """Candles rolled up from 1m state against a sample of windows recomputed from the
    trades: the independent check of a rollup (a rollup checked against itself proves
    nothing)."""
    return gx.ExpectationSuite(
        name=trades_sample_suite_name(tf), expectations=trades_sample_expectations(tf)
    )


def invariant_suite(tf: Timeframe) -> gx.ExpectationSuite:
    """The suite every candle a ``tf`` run writes must pass before it is published."""
    return gx.ExpectationSuite(name=suite_name(tf), expectations=invariant_expectations(tf))


def reconciliation_suite(tf: Timeframe) -> gx.ExpectationSuite | None:
    """``tf`` candles against the rollup of the next smaller timeframe (None for 1m)."""
    expectations = reconciliation_expectations(tf)
    if not expectations:
        return None
    return gx.ExpectationSuite(name=reconciliation_suite_name(tf), expectations=expectations)


def gap_suite(tf: Timeframe) -> gx.ExpectationSuite:
    """The gap report as a check: a warning in the data docs, never blocking publication."""
    return gx.ExpectationSuite(
        name=gap_suite_name(tf),
        expectations=[
            _noted(
                gxe.ExpectColumnValuesToBeBetween(column="empty_windows", max_value=0),
                f"every {tf.name} window between a symbol's first and last trade of the day "
                "has trades (a feed outage shows here; warning, not blocking)",
            )
        ],
    )
