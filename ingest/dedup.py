"""De-duplication of trades (keep, drop as exact duplicates, reject as conflicting) and of rejects.

A row's key is (exchange, symbol, trade id) and its payload (price, quantity, side, ts). Rows are
compared with the rows already stored in ``trades`` and with earlier rows of the same input. A
trade id is a number (``trade_id``) or text (``trade_id_text``, see :mod:`ingest.ids`): keys are
integers either way, a text id standing for its code among the batch's distinct text ids, in a
key space of its own (``pair * 2 + 1``), so a text id never equals a numeric one.

A reject is identified by its raw values as text and its reason (:data:`REJECT_IDENTITY`): one
that is already in ``trades_rejected``, or earlier in the same input, is not appended again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyiceberg.expressions import (
    AlwaysFalse,
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    In,
    IsNull,
    LessThanOrEqual,
    Or,
    Reference,
)
from pyiceberg.expressions.literals import literal
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.manifest import FileFormat
from pyiceberg.table import FileScanTask, Table

from ingest.amounts import parse_amount
from ingest.columns import bools, dictionary_codes, ints
from ingest.reading import REQUIRED_COLUMNS
from ingest.timestamps import parse_ts

REJECT_IDENTITY = (*REQUIRED_COLUMNS, "reason")
"""The ``trades_rejected`` columns whose values (nulls equal to nulls) make two rejects the same."""

# PyIceberg checks file statistics against an In predicate of at most this many values; beyond
# it, a range does that job.
_IN_LIMIT = 200


@dataclass
class _Rows:
    """Keys and payloads as integers: (pair, trade_id) and (price, quantity, is_buy, ts).

    ``is_text`` (None: no row) flags the rows whose ``trade_id`` is the code of a text id.
    """

    pair: np.ndarray
    trade_id: np.ndarray
    price: np.ndarray
    quantity: np.ndarray
    is_buy: np.ndarray
    ts: np.ndarray
    is_text: np.ndarray | None = None

    @classmethod
    def empty(cls) -> _Rows:
        none = np.zeros(0, np.int64)
        return cls(none, none, none, none, np.zeros(0, bool), none)

    def __len__(self) -> int:
        return len(self.pair)

    def has_text(self) -> bool:
        return self.is_text is not None and bool(self.is_text.any())

    def key_pair(self, text_keys: bool) -> np.ndarray:
        """The pair, or with ``text_keys`` the pair in the key space of its id's kind."""
        if not text_keys:
            return self.pair
        flag = np.zeros(len(self), np.int64) if self.is_text is None else self.is_text
        return self.pair * 2 + flag

    def same_payload(self, i: np.ndarray, other: _Rows, j: np.ndarray) -> np.ndarray:
        return (
            (self.price[i] == other.price[j])
            & (self.quantity[i] == other.quantity[j])
            & (self.is_buy[i] == other.is_buy[j])
            & (self.ts[i] == other.ts[j])
        )


def _stored_rows(
    trades: Table,
    batch: _Rows,
    exchanges: pa.Array,
    symbols: pa.Array,
    text_ids: pa.Array | None = None,
) -> _Rows:
    """Rows already in ``trades`` that may share a key with the batch.

    ``text_ids``: the distinct text ids the batch's text rows are codes into.
    """
    empty = _Rows.empty()
    if not len(batch) or trades.current_snapshot() is None:
        return empty
    n_symbols = max(len(symbols), 1)
    used_pairs = np.unique(batch.pair)
    used_exchanges = exchanges.take(pa.array(np.unique(used_pairs // n_symbols)))
    used_symbols = symbols.take(pa.array(np.unique(used_pairs % n_symbols)))
    is_text = batch.is_text if batch.has_text() else None
    numeric = batch.trade_id if is_text is None else batch.trade_id[~is_text]
    ids_filter: list[BooleanExpression] = []
    lo, hi = 0, -1
    if len(numeric):
        lo, hi = int(numeric.min()), int(numeric.max())
        ids_filter.append(
            And(
                GreaterThanOrEqual(term=Reference("trade_id"), value=literal(lo)),
                LessThanOrEqual(term=Reference("trade_id"), value=literal(hi)),
            )
        )
    fields = ["exchange", "symbol", "trade_id", "price", "quantity", "side", "ts"]
    if text_ids is not None and is_text is not None:
        ids_filter.append(_may_equal("trade_id_text", pa.chunked_array([text_ids])))
        fields.append("trade_id_text")
    row_filter: BooleanExpression = And(
        In(term=Reference("exchange"), values={literal(v) for v in used_exchanges.to_pylist()}),
        In(term=Reference("symbol"), values={literal(v) for v in used_symbols.to_pylist()}),
        ids_filter[0] if len(ids_filter) == 1 else Or(*ids_filter),
    )
    found = trades.scan(row_filter=row_filter, selected_fields=tuple(fields)).to_arrow()
    if not found.num_rows:
        return empty
    ex = ints(pc.index_in(found["exchange"].cast(exchanges.type), value_set=exchanges), fill=-1)
    sym = ints(pc.index_in(found["symbol"].cast(symbols.type), value_set=symbols), fill=-1)
    ids = ints(found["trade_id"], fill=-1)  # ids are never negative: -1 is a text id's row
    known_id = (ids >= lo) & (ids <= hi)
    found_text = np.zeros(len(ids), dtype=bool)
    if "trade_id_text" in fields:
        codes = ints(pc.index_in(found["trade_id_text"], value_set=text_ids), fill=-1)
        found_text = codes >= 0
        ids = np.where(found_text, codes, ids)
        known_id |= found_text
    known = (ex >= 0) & (sym >= 0) & known_id
    price = parse_amount(found["price"], "price")
    quantity = parse_amount(found["quantity"], "quantity")
    ts = parse_ts(found["ts"])
    return _Rows(
        pair=(ex * n_symbols + sym)[known],
        trade_id=ids[known],
        price=price.units[known],
        quantity=quantity.units[known],
        is_buy=bools(pc.equal(found["side"], "buy"))[known],
        ts=ts.us[known],
        is_text=found_text[known] if is_text is not None else None,
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


def _distinct(values: np.ndarray) -> bool:
    """Whether no value occurs twice. Feeds come in (nearly) increasing order, which the
    check and the stable sort (a run-aware merge sort) both take advantage of."""
    if len(values) < 2 or bool(np.all(values[1:] > values[:-1])):
        return True
    ordered = np.sort(values, kind="stable")
    return bool(np.all(ordered[1:] != ordered[:-1]))


def _classify(batch: _Rows, stored: _Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks over the batch: keep, duplicate, conflicting (exactly one is true per row)."""
    n = len(batch)
    keep = np.ones(n, dtype=bool)
    duplicate = np.zeros(n, dtype=bool)
    conflict = np.zeros(n, dtype=bool)
    if not n:
        return keep, duplicate, conflict
    text_keys = batch.has_text() or stored.has_text()
    pair, trade_id = batch.key_pair(text_keys), batch.trade_id
    if not len(stored) and _distinct(trade_id):
        # Every trade id once (what a feed delivers), so every key once, and nothing is stored
        # under any of them: all rows are kept, without sorting the keys.
        return keep, duplicate, conflict
    if len(stored):
        pair = np.concatenate([pair, stored.key_pair(text_keys)])
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


# --------------------------------------------------------------------------------------------
# Rejects

# Most distinct values first: the columns that rule out the most stored rows at the least cost.
_SELECTIVE_FIRST = ("ts", "trade_id", "price", "quantity", "symbol", "exchange", "side", "reason")


def _text_column(table: pa.Table, name: str) -> pa.ChunkedArray:
    return table[name].cast(pa.large_string())


def _may_equal(name: str, values: pa.ChunkedArray) -> BooleanExpression:
    """Rows whose ``name`` may be one of ``values``: one of them when they are few, else between
    their smallest and largest; or null, when one of them is null."""
    distinct = pc.unique(values)
    present = distinct.drop_null()
    column = Reference(name)
    condition: BooleanExpression
    if not len(present):
        condition = AlwaysFalse()
    elif len(present) <= _IN_LIMIT:
        condition = In(term=column, values={literal(v) for v in present.to_pylist()})
    else:
        lo, hi = (bound.as_py() for bound in pc.min_max(present).values())
        condition = And(
            GreaterThanOrEqual(term=column, value=literal(lo)),
            LessThanOrEqual(term=column, value=literal(hi)),
        )
    return Or(condition, IsNull(term=column)) if distinct.null_count else condition


def reject_filter(rejects: pa.Table) -> BooleanExpression:
    """A row filter passing every stored reject that may equal one of ``rejects``.

    Each :data:`REJECT_IDENTITY` column must hold one of the values of ``rejects`` (or lie in
    their range), so the scan skips data files whose column statistics rule that out: in
    practice the files of other inputs, unless outliers widen the ranges.
    """
    return And(*(_may_equal(name, _text_column(rejects, name)) for name in _SELECTIVE_FIRST))


def recorded_rejects(rejected: Table, rejects: pa.Table) -> pa.Table:
    """The :data:`REJECT_IDENTITY` columns of stored rejects that may equal one of ``rejects``.

    Every row of a data file that may hold one (by its statistics) is returned: the exact
    comparison is :func:`new_rejects`'s. The files are read in one multi-threaded Arrow read
    when that reads exactly what PyIceberg's scan would (:func:`_read_directly`); PyIceberg
    reads each file on its own, a few milliseconds each, and a day's rejects are hundreds of
    small files until maintenance compacts them.
    """
    if not rejects.num_rows or rejected.current_snapshot() is None:
        return pa.table({name: pa.array([], pa.large_string()) for name in REJECT_IDENTITY})
    scan = rejected.scan(row_filter=reject_filter(rejects), selected_fields=REJECT_IDENTITY)
    tasks = list(scan.plan_files())
    direct = _read_directly(rejected, tasks)
    if direct is not None:
        return direct
    return scan.to_arrow()


def _read_directly(table: Table, tasks: list[FileScanTask]) -> pa.Table | None:
    """The identity columns of every row of ``tasks``' files, or None when a direct read could
    differ from PyIceberg's: delete files, files of another format, a column whose name ever
    meant another field, or a file IO other than PyArrow's."""
    io = table.io
    if not isinstance(io, PyArrowFileIO):
        return None
    metadata = table.metadata
    ids = {name: metadata.schema().find_field(name).field_id for name in REJECT_IDENTITY}
    for schema in metadata.schemas:
        names = {field.name: field.field_id for field in schema.fields}
        if any(names.get(name, ids[name]) != ids[name] for name in REJECT_IDENTITY):
            return None
    paths: list[str] = []
    filesystem = None
    for task in tasks:
        if task.delete_files or task.file.file_format != FileFormat.PARQUET:
            return None
        scheme, netloc, path = io.parse_location(task.file.file_path)
        fs = io.fs_by_scheme(scheme, netloc)
        if filesystem is not None and fs is not filesystem:
            return None
        filesystem = fs
        paths.append(path)
    empty = pa.table({name: pa.array([], pa.large_string()) for name in REJECT_IDENTITY})
    if not paths:
        return empty
    dataset = ds.dataset(paths, format="parquet", filesystem=filesystem)
    if any(name not in dataset.schema.names for name in REJECT_IDENTITY):
        return None  # files older than a column: PyIceberg fills it with nulls
    found = dataset.to_table(columns=list(REJECT_IDENTITY))
    return pa.Table.from_arrays(
        [found[name].cast(pa.large_string()) for name in REJECT_IDENTITY], names=REJECT_IDENTITY
    )


def new_rejects(rejects: pa.Table, stored: pa.Table) -> np.ndarray:
    """Mask over ``rejects``: the first of identical rejects, unless one is already ``stored``.

    Both tables hold the :data:`REJECT_IDENTITY` columns as text. While there are more stored
    rows than rejects (the stored rows of other inputs), those with a value that no reject has
    are dropped first, one column at a time (hash lookups). Each remaining row becomes one
    integer (the codes of its values into their distinct values, nulls with a code of their
    own), so the comparison is a sort of integers, not of strings.
    """
    for name in _SELECTIVE_FIRST:
        if stored.num_rows <= rejects.num_rows:
            break  # further filtering could at most halve the work below
        values = pc.unique(_text_column(rejects, name))
        stored = stored.filter(
            pc.is_in(_text_column(stored, name), value_set=values, skip_nulls=False)
        )
    n = rejects.num_rows
    key = np.zeros(n + stored.num_rows, dtype=np.int64)
    span = 1  # every key is below span
    for name in REJECT_IDENTITY:
        both = pa.chunked_array(
            [*_text_column(rejects, name).chunks, *_text_column(stored, name).chunks],
            pa.large_string(),
        )
        codes, distinct = dictionary_codes(both)
        width = len(distinct) + 1  # code -1 (null) becomes 0
        if span > (2**63 - 1) // width:
            # Renumber the keys seen so far densely: they are at most one per row.
            _, key = np.unique(key, return_inverse=True)
            span = int(key.max()) + 1
        key = key * width + (codes + 1)
        span *= width
    batch = key[:n]
    first = np.zeros(n, dtype=bool)
    first[np.unique(batch, return_index=True)[1]] = True
    if not stored.num_rows:
        return first
    return first & ~np.isin(batch, key[n:])
