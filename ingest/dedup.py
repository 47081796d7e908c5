"""De-duplication: which valid rows to keep, drop as exact duplicates, or reject as conflicting.

A row's key is (exchange, symbol, trade_id) and its payload (price, quantity, side, ts). Rows are
compared with the rows already stored in ``trades`` and with earlier rows of the same input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import (
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    In,
    LessThanOrEqual,
    Reference,
)
from pyiceberg.expressions.literals import literal
from pyiceberg.table import Table

from ingest.parsing import _bools, _ints, _parse_amount, _parse_ts


@dataclass
class _Rows:
    """Keys and payloads as integers: (pair, trade_id) and (price, quantity, is_buy, ts)."""

    pair: np.ndarray
    trade_id: np.ndarray
    price: np.ndarray
    quantity: np.ndarray
    is_buy: np.ndarray
    ts: np.ndarray

    @classmethod
    def empty(cls) -> _Rows:
        none = np.zeros(0, np.int64)
        return cls(none, none, none, none, np.zeros(0, bool), none)

    def __len__(self) -> int:
        return len(self.pair)

    def same_payload(self, i: np.ndarray, other: _Rows, j: np.ndarray) -> np.ndarray:
        return (
            (self.price[i] == other.price[j])
            & (self.quantity[i] == other.quantity[j])
            & (self.is_buy[i] == other.is_buy[j])
            & (self.ts[i] == other.ts[j])
        )


def _stored_rows(trades: Table, batch: _Rows, exchanges: pa.Array, symbols: pa.Array) -> _Rows:
    """Rows already in ``trades`` that may share a key with the batch."""
    empty = _Rows.empty()
    if not len(batch) or trades.current_snapshot() is None:
        return empty
    n_symbols = max(len(symbols), 1)
    used_pairs = np.unique(batch.pair)
    used_exchanges = exchanges.take(pa.array(np.unique(used_pairs // n_symbols)))
    used_symbols = symbols.take(pa.array(np.unique(used_pairs % n_symbols)))
    lo, hi = int(batch.trade_id.min()), int(batch.trade_id.max())
    row_filter: BooleanExpression = And(
        In(term=Reference("exchange"), values={literal(v) for v in used_exchanges.to_pylist()}),
        In(term=Reference("symbol"), values={literal(v) for v in used_symbols.to_pylist()}),
        GreaterThanOrEqual(term=Reference("trade_id"), value=literal(lo)),
        LessThanOrEqual(term=Reference("trade_id"), value=literal(hi)),
    )
    fields = ("exchange", "symbol", "trade_id", "price", "quantity", "side", "ts")
    found = trades.scan(row_filter=row_filter, selected_fields=fields).to_arrow()
    if not found.num_rows:
        return empty
    ex = _ints(pc.index_in(found["exchange"].cast(exchanges.type), value_set=exchanges), fill=-1)
    sym = _ints(pc.index_in(found["symbol"].cast(symbols.type), value_set=symbols), fill=-1)
    ids = _ints(found["trade_id"])
    known = (ex >= 0) & (sym >= 0) & (ids >= lo) & (ids <= hi)
    price = _parse_amount(found["price"], "price")
    quantity = _parse_amount(found["quantity"], "quantity")
    ts = _parse_ts(found["ts"])
    return _Rows(
        pair=(ex * n_symbols + sym)[known],
        trade_id=ids[known],
        price=price.units[known],
        quantity=quantity.units[known],
        is_buy=_bools(pc.equal(found["side"], "buy"))[known],
        ts=ts.us[known],
    )


def _group_order(pair: np.ndarray, trade_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sort order by key, and where each key's run starts in that order."""
    lo = int(trade_id.min())
    span = int(trade_id.max()) - lo + 1
    n_pairs = int(pair.max()) + 1
    starts = np.empty(len(pair), dtype=bool)
    starts[0] = True
    if span * n_pairs < 2**63:
        # Feeds arrive roughly in trade_id order, so a run-aware stable sort of a trade_id-major
        # key is several times faster than sorting by pair first (or a lexsort).
        key = (trade_id - lo) * n_pairs + pair
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        np.not_equal(sorted_key[1:], sorted_key[:-1], out=starts[1:])
        return order, starts
    order = np.lexsort((pair, trade_id))
    p, t = pair[order], trade_id[order]
    starts[1:] = (p[1:] != p[:-1]) | (t[1:] != t[:-1])
    return order, starts


def _classify(batch: _Rows, stored: _Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks over the batch: keep, duplicate, conflicting (exactly one is true per row)."""
    n = len(batch)
    keep = np.ones(n, dtype=bool)
    duplicate = np.zeros(n, dtype=bool)
    conflict = np.zeros(n, dtype=bool)
    if not n:
        return keep, duplicate, conflict
    pair, trade_id = batch.pair, batch.trade_id
    if len(stored):
        pair = np.concatenate([pair, stored.pair])
        trade_id = np.concatenate([trade_id, stored.trade_id])
    order, starts = _group_order(pair, trade_id)
    # Most keys occur once (kept as they are); only repeated keys need a closer look.
    alone = starts.copy()
    alone[:-1] &= starts[1:]
    if alone.all():
        return keep, duplicate, conflict
    shared = np.flatnonzero(~alone)
    rows = order[shared]  # < n: a batch row; >= n: a stored row
    group_starts = np.flatnonzero(starts[shared])
    group = np.cumsum(starts[shared]) - 1
    in_batch = rows < n
    b, b_group = rows[in_batch], group[in_batch]

    stored_of_group = np.full(len(group_starts), -1, dtype=np.int64)
    stored_of_group[group[~in_batch]] = rows[~in_batch] - n
    stored_idx = stored_of_group[b_group]
    has_stored = stored_idx >= 0
    equals_stored = np.zeros(len(b), dtype=bool)
    with_stored = np.flatnonzero(has_stored)
    equals_stored[with_stored] = batch.same_payload(b[with_stored], stored, stored_idx[with_stored])

    # The first batch row of each key (lowest input position) is the one to keep.
    first = np.minimum.reduceat(np.where(in_batch, rows, n), group_starts)[b_group]
    is_first = first == b
    equals_first = np.ones(len(b), dtype=bool)
    later = np.flatnonzero(~is_first)
    equals_first[later] = batch.same_payload(b[later], batch, first[later])
    differing = np.zeros(len(group_starts), dtype=bool)
    differing[b_group[~equals_first]] = True
    in_conflict = differing[b_group]

    keep[b] = ~has_stored & ~in_conflict & is_first
    duplicate[b] = np.where(has_stored, equals_stored, ~in_conflict & ~is_first)
    conflict[b] = np.where(has_stored, ~equals_stored, in_conflict)
    return keep, duplicate, conflict
