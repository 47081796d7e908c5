"""The row checks: each reason code next to the check that assigns it, in priority order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from core.tables import MAX_EXCHANGE_LENGTH, MAX_SYMBOL_LENGTH
from ingest.columns import lengths
from ingest.parsing import ParsedTrades


@dataclass(frozen=True)
class TsBounds:
    """The accepted range of ts, in microseconds since the epoch (both ends included)."""

    earliest_us: int
    latest_us: int


_Check = Callable[[ParsedTrades, TsBounds], np.ndarray]


def _longer_than(codes: np.ndarray, values: pa.Array, limit: int) -> np.ndarray:
    """Rows whose stripped value (``codes`` into ``values``, -1 = none) exceeds ``limit``.

    Measured once per distinct value, not once per row.
    """
    too_long = np.append(lengths(values) > limit, False)  # index -1 (missing) picks False
    return too_long[codes]


# Order matters: a row gets the first reason that applies.
RULES: tuple[tuple[str, _Check], ...] = (
    ("missing_exchange", lambda t, _: t.exchange_codes < 0),
    (
        "exchange_too_long",
        lambda t, _: _longer_than(t.exchange_codes, t.exchanges, MAX_EXCHANGE_LENGTH),
    ),
    ("missing_symbol", lambda t, _: t.symbol_codes < 0),
    ("symbol_too_long", lambda t, _: _longer_than(t.symbol_codes, t.symbols, MAX_SYMBOL_LENGTH)),
    ("missing_trade_id", lambda t, _: t.trade_id.missing),
    ("invalid_trade_id", lambda t, _: t.trade_id.invalid),
    ("missing_price", lambda t, _: t.price.missing),
    ("missing_quantity", lambda t, _: t.quantity.missing),
    ("missing_ts", lambda t, _: t.ts.missing),
    ("non_finite_price", lambda t, _: t.price.non_finite),
    ("non_finite_quantity", lambda t, _: t.quantity.non_finite),
    ("non_positive_price", lambda t, _: t.price.negative | t.price.zero),
    ("non_positive_quantity", lambda t, _: t.quantity.negative | t.quantity.zero),
    ("price_precision", lambda t, _: t.price.unrepresentable),
    ("quantity_precision", lambda t, _: t.quantity.unrepresentable),
    ("invalid_side", lambda t, _: ~t.side_ok),
    ("ts_in_future", lambda t, bounds: t.ts.us > bounds.latest_us),
    ("ts_too_old", lambda t, bounds: t.ts.us < bounds.earliest_us),
    ("ts_precision", lambda t, _: t.ts.sub_us),
)
"""(reason, check) pairs; a check gives a mask of the rows that fail it."""

CONFLICTING_DUPLICATE = "conflicting_duplicate"
"""Not a check of one row: assigned by de-duplication to rows that passed every rule."""

REASONS = (*(name for name, _ in RULES), CONFLICTING_DUPLICATE)
"""Every reason code, in rule order; a reject's code is its index here."""

CONFLICT_CODE = REASONS.index(CONFLICTING_DUPLICATE)


def first_failed_rule(trades: ParsedTrades, bounds: TsBounds) -> np.ndarray:
    """Per row, the code of the first rule it fails (an index into REASONS), or -1."""
    reason = np.full(len(trades), -1, dtype=np.int8)
    # Later rules first, so an earlier failing rule overwrites the code of a later one.
    for code in range(len(RULES) - 1, -1, -1):
        _, check = RULES[code]
        reason[check(trades, bounds)] = code
    return reason
