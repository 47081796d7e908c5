"""Ingest: validate raw trades and append them to Iceberg with PyIceberg (no Spark).

Every input row ends up in exactly one place: appended to ``trades``, dropped as an exact
duplicate of a row already kept, or recorded in ``trades_rejected`` with one reason code (appended,
unless an identical reject is recorded already).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog

from core.tables import (
    TRADES,
    TRADES_REJECTED,
    rejected_arrow_schema,
    trades_arrow_schema,
)
from core.time import duration_us, to_us, utc
from ingest.amounts import decimal_from_units
from ingest.appending import US_PER_DAY, CachedTable, append_by_day
from ingest.columns import Column, decoded, dictionary_codes, ints, use_reusing_memory_pool
from ingest.dedup import _classify, _Rows, _stored_rows, new_rejects, recorded_rejects
from ingest.parsing import ParsedTrades, parse_trades
from ingest.reading import REQUIRED_COLUMNS, check_columns, read_trades_file
from ingest.rules import CONFLICT_CODE, REASONS, TsBounds, first_failed_rule


@dataclass(frozen=True)
class IngestResult:
    """What one ingest did. ``rows_in == accepted + duplicates + rejected`` always holds."""

    rows_in: int
    accepted: int
    duplicates: int
    rejected: int
    """Every rejected input row, whether appended to ``trades_rejected`` now or not."""
    rejected_by_reason: dict[str, int]
    """Non-zero counts only, in rule order; they add up to ``rejected``."""
    rejects_already_recorded: int
    """Of ``rejected``, the rows not appended because an identical reject (same raw values and
    reason) is in ``trades_rejected`` already or earlier in this input; the other
    ``rejected - rejects_already_recorded`` rows were appended."""
    trades_snapshot_id: int | None
    """Snapshot of the ``trades`` append; None when nothing was appended."""


class TablesOutdated(RuntimeError):
    """The tables were made by an older version: ``ensure_tables`` upgrades them."""


class IngestAccountingError(RuntimeError):
    """Rows in and rows out do not add up: a bug in ingest, found before anything was written."""


def ingest_file(catalog: Catalog, namespace: str, path: Path, **kwargs: Any) -> IngestResult:
    """Read ``path`` with :func:`read_trades_file` and :func:`ingest` it (source = the path)."""
    use_reusing_memory_pool()
    return ingest(catalog, namespace, read_trades_file(Path(path)), source=str(path), **kwargs)


def ingest(
    catalog: Catalog,
    namespace: str,
    raw: pa.Table,
    *,
    source: str | pa.Array,
    now: datetime | None = None,
    properties: Mapping[str, str] | None = None,
    min_ts: datetime = datetime(2000, 1, 1, tzinfo=UTC),
    max_future: timedelta = timedelta(minutes=5),
    synthesize_missing_ids: bool | np.ndarray = False,
) -> IngestResult:
    """Validate raw trades; append good ones to ``trades`` and bad ones to ``trades_rejected``.

    Accepted input types: exchange, symbol and side as text; price and quantity as integers,
    floats, decimals or numeric text; trade_id as an integer, float, decimal or text (an id
    that is not a number is a text id, see :mod:`ingest.ids`); ts as a timestamp or ISO-8601 text
    (``YYYY-MM-DD[T ]HH:MM[:SS[.fraction]][Z|±HH[:MM]]``). Timestamps without a zone, as text or
    as a timestamp column, are taken as UTC: input data is the edge where :mod:`core.time`
    allows that. Floats are converted through their shortest round-trip text
    (0.1 -> 0.10000000). Other columns are ignored; ``ingested_at`` is always set to ``now``.

    Rows are checked in the order of :data:`~ingest.rules.REASONS`; a failing row is appended to
    ``trades_rejected`` with its raw values as text and the first reason that applies. Rows with
    the key (exchange, symbol, trade_id) and payload (price, quantity, side, ts) of a row already
    kept, in the table or earlier in the input, are dropped as duplicates. Rows sharing a key with
    a different payload are conflicting: when one version is already stored, the others are
    rejected; when none is stored, every version is rejected, since none can be trusted.

    Rejects are recorded once: a reject whose raw values (as text, nulls equal to nulls) and
    reason equal those of a row already in ``trades_rejected``, or of an earlier reject of the
    same input, is counted in ``rejected`` and ``rejects_already_recorded`` but not appended.
    Identical bad rows within one input are therefore stored as one row.

    ``trades`` is only ever appended to, in one commit before the one of the rejects, and
    ingesting the same input again (with the same ``now``) is a no-op for both tables. So a crash
    between the two commits is fully repaired by ingesting the same input again: its accepted
    rows are now exact duplicates of the stored ones and are dropped, and it finds the same
    rejects, none of them recorded yet, and appends each once.

    Args:
        catalog: PyIceberg catalog holding the tables made by ``ensure_tables``.
        namespace: Namespace of ``trades`` and ``trades_rejected``.
        raw: The input rows.
        source: Where the rows came from (recorded with rejects and in the snapshot summary),
            or one text value per row (several files ingested as one batch).
        now: Ingestion time, an aware datetime; defaults to the current time.
        min_ts: Trades before this (an aware datetime) are rejected as ``ts_too_old``.
        max_future: Trades after ``now + max_future`` are rejected as ``ts_in_future``.
        properties: More snapshot summary properties of both appends (a landing batch's
            files: committed atomically with its trades).
        synthesize_missing_ids: give a trade without an id a synthetic text id
            (:func:`~ingest.ids.synthetic_ids`) instead of rejecting it as
            ``missing_trade_id``; for formats whose ids may be missing (a boolean array: for
            the rows where it is true).

    Raises:
        SchemaError: a required column is missing, duplicated, of an unusable type, or holds a
            value that is not a number / timestamp at all. Nothing is written in that case.
        ValueError: ``now`` or ``min_ts`` is naive (no time zone). Nothing is written.
        IngestAccountingError: the rows out do not add up to the rows in (a bug). Nothing is
            written.
        TablesOutdated: ``trades`` predates text trade ids (``ensure_tables`` upgrades it).
            Nothing is written.
    """
    use_reusing_memory_pool()
    now = utc(now) if now is not None else datetime.now(UTC)
    min_ts = utc(min_ts)
    check_columns(raw)
    n = raw.num_rows
    # Chunked columns are used as they are: combining them first would copy every value once more.
    columns = {name: raw.column(name) for name in REQUIRED_COLUMNS}

    # Parse everything (and raise SchemaError) before anything is written.
    parsed = parse_trades(columns, synthesize_missing_ids=synthesize_missing_ids)
    now_us = to_us(now)
    bounds = TsBounds(earliest_us=to_us(min_ts), latest_us=now_us + duration_us(max_future))
    reason = first_failed_rule(parsed, bounds)

    valid = np.flatnonzero(reason < 0)
    pair_codes = parsed.exchange_codes * max(len(parsed.symbols), 1) + parsed.symbol_codes
    trade_ids, is_text, text_ids = _key_ids(parsed, valid)
    batch = _Rows(
        pair=_rows_of(pair_codes, valid),
        trade_id=trade_ids,
        price=_rows_of(parsed.price.units, valid),
        quantity=_rows_of(parsed.quantity.units, valid),
        is_buy=_rows_of(parsed.is_buy, valid),
        ts=_rows_of(parsed.ts.us, valid),
        is_text=is_text,
    )
    trades = CachedTable.of(catalog.load_table((namespace, TRADES)))
    if trades.schema().find_field("trade_id").required:
        raise TablesOutdated(
            f"table {namespace}.{TRADES} predates text trade ids; upgrade it with "
            "core.tables.ensure_tables (`ohlcv stack up` and `ohlcv ingest` run it); nothing "
            "was written"
        )
    rejected_table = CachedTable.of(catalog.load_table((namespace, TRADES_REJECTED)))
    stored = _stored_rows(trades, batch, parsed.exchanges, parsed.symbols, text_ids)
    keep, duplicate, conflict = _classify(batch, stored)
    reason[valid[conflict]] = CONFLICT_CODE

    accepted_idx = valid[keep]
    rejected_idx = np.flatnonzero(reason >= 0)
    duplicates = int(np.count_nonzero(duplicate))
    counts = np.bincount(reason[rejected_idx], minlength=len(REASONS))
    by_reason = {REASONS[i]: int(c) for i, c in enumerate(counts) if c}
    if len(accepted_idx) + duplicates + len(rejected_idx) != n:
        raise IngestAccountingError(
            f"row accounting broken: {n} rows in, but {len(accepted_idx)} accepted + "
            f"{duplicates} duplicates + {len(rejected_idx)} rejected out; nothing was written"
        )

    # Rejects (and which of them are new) are worked out before anything is written.
    rejects = _rejected_table(columns, rejected_idx, reason, source, now_us)
    fresh = new_rejects(rejects, recorded_rejects(rejected_table, rejects))
    already_recorded = len(rejected_idx) - int(np.count_nonzero(fresh))
    rejects = rejects.filter(pa.array(fresh, type=pa.bool_()))

    summary = {
        "ohlcv.ingest.source": source if isinstance(source, str) else f"{len(source)} rows",
        "ohlcv.ingest.rows-in": str(n),
        "ohlcv.ingest.duplicates": str(duplicates),
        "ohlcv.ingest.rejected": str(len(rejected_idx)),
        "ohlcv.ingest.rejects-already-recorded": str(already_recorded),
        **(properties or {}),
    }
    snapshot_id: int | None = None
    if len(accepted_idx):
        accepted, days = _accepted_table(accepted_idx, parsed, now_us)
        append_by_day(trades, accepted, days, summary)
        snapshot = trades.current_snapshot()
        assert snapshot is not None
        snapshot_id = snapshot.snapshot_id
    if rejects.num_rows:
        rejected_table.append(rejects, snapshot_properties=summary)

    return IngestResult(
        rows_in=n,
        accepted=len(accepted_idx),
        duplicates=duplicates,
        rejected=len(rejected_idx),
        rejected_by_reason=by_reason,
        rejects_already_recorded=already_recorded,
        trades_snapshot_id=snapshot_id,
    )


def _key_ids(
    parsed: ParsedTrades, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, pa.Array | None]:
    """The valid rows' trade ids as integers for de-duplication: (ids, which are text codes,
    the distinct text ids they code). A text id's integer is its code among the distinct text
    ids of the valid rows; (None, None) when no valid row has a text id."""
    ids = parsed.trade_id
    numeric = _rows_of(ids.value, valid)
    if ids.is_text is None or ids.text is None:
        return numeric, None, None
    is_text = _rows_of(ids.is_text, valid)
    if not is_text.any():
        return numeric, None, None
    codes, distinct = dictionary_codes(ids.text.take(pa.array(valid)))
    return np.where(is_text, codes, numeric), is_text, distinct


def _rows_of(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` for sorted, distinct ``rows``; ``values`` itself (no copy) when those
    are all of them, as they are when every row of the input is valid."""
    return values if len(rows) == len(values) else np.take(values, rows)


# --------------------------------------------------------------------------------------------
# Output tables


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(us, type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _accepted_table(
    idx: np.ndarray, parsed: ParsedTrades, now_us: int
) -> tuple[pa.Table, np.ndarray]:
    """The rows to append, sorted by (day, symbol), and the day of each (days since 1970)."""
    # The table's sort order is (symbol, ts): files written in that order have tight statistics.
    # Rows arrive roughly in ts order already: a stable sort by (day, symbol) alone, a radix
    # sort on small integers, gets most of the benefit at a fraction of the cost of a full sort,
    # and makes each day partition one contiguous slice.
    symbols = parsed.symbols
    n_symbols = max(len(symbols), 1)
    rank = np.empty(len(symbols), dtype=np.int64)
    rank[ints(pc.sort_indices(symbols))] = np.arange(len(symbols))
    day_of_row = _rows_of(parsed.ts.us, idx) // US_PER_DAY
    first_day = int(day_of_row.min())
    day_of_row -= first_day
    key = day_of_row * n_symbols + np.take(rank, _rows_of(parsed.symbol_codes, idx))
    top = int(key.max())
    narrow = key.astype(np.int16 if top < 2**15 else np.int32) if top < 2**31 else key
    in_order = bool(np.all(key[1:] >= key[:-1]))  # one symbol's day, as a file holds
    order = np.arange(len(narrow)) if in_order else np.argsort(narrow, kind="stable")
    rows = order if len(idx) == len(parsed) else np.take(idx, order)
    as_they_are = in_order and len(idx) == len(parsed)
    # Sorted, the days are runs in increasing order: their lengths are the rows of each day.
    per_day = np.bincount(day_of_row)
    days = np.repeat(np.arange(first_day, first_day + len(per_day)), per_day)

    def taken(values: np.ndarray) -> np.ndarray:
        # Every row, in order: the parsed values themselves (gathering would copy them all).
        return values if as_they_are else np.take(values, rows)

    build: dict[str, Callable[[], pa.Array]] = {
        "exchange": lambda: _decoded_codes(taken(parsed.exchange_codes), parsed.exchanges),
        "symbol": lambda: _decoded_codes(taken(parsed.symbol_codes), symbols),
        "trade_id": lambda: _numeric_ids(parsed, rows, taken),
        "trade_id_text": lambda: _text_ids(parsed, rows),
        "price": lambda: decimal_from_units(taken(parsed.price.units)),
        "quantity": lambda: decimal_from_units(taken(parsed.quantity.units)),
        "side": lambda: _sides(taken(parsed.is_buy)),
        "ts": lambda: _timestamps(taken(parsed.ts.us)),
        "ingested_at": lambda: _timestamps(np.full(len(rows), now_us, dtype=np.int64)),
    }
    # Each column is a gather and a conversion, both outside the GIL: they run side by side.
    schema = trades_arrow_schema()
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        columns = list(pool.map(lambda name: build[name](), schema.names))
    return pa.Table.from_arrays(columns, schema=schema), days


def _numeric_ids(
    parsed: ParsedTrades, rows: np.ndarray, taken: Callable[[np.ndarray], np.ndarray]
) -> pa.Array:
    """``trade_id`` of the rows: null where the id is text."""
    is_text = parsed.trade_id.is_text
    mask = None if is_text is None else taken(is_text)
    return pa.array(taken(parsed.trade_id.value), type=pa.int64(), mask=mask)


def _text_ids(parsed: ParsedTrades, rows: np.ndarray) -> pa.Array:
    """``trade_id_text`` of the rows: null where the id is a number."""
    text = parsed.trade_id.text
    if text is None:
        return pa.nulls(len(rows), pa.large_string())
    taken = text.take(pa.array(rows))
    return taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken


def _sides(is_buy: np.ndarray) -> pa.Array:
    """Each row's side as text, decoded from the two-value dictionary (sell, buy)."""
    codes = pa.array(is_buy.view(np.int8))
    return pa.DictionaryArray.from_arrays(codes, pa.array(["sell", "buy"], pa.large_string())).cast(
        pa.large_string()
    )


def _decoded_codes(codes: np.ndarray, values: pa.Array) -> pa.Array:
    """``values.take(codes)`` (codes are valid indices here: rows with -1 were rejected).

    Sorted rows hold each symbol in long runs: those are decoded as runs (a run-end encoded
    array), a copy of each run's value; otherwise decoding them as a dictionary copies the
    strings about twice as fast as ``take``.
    """
    n = len(codes)
    starts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    if n and len(starts) < n // 16:
        width = pa.int32() if n < 2**31 else pa.int64()
        ends = pa.array(np.append(starts, n), type=width)
        firsts = pa.array(np.take(codes, np.append(0, starts)))
        return pc.run_end_decode(pa.RunEndEncodedArray.from_arrays(ends, values.take(firsts)))
    indices = pa.array(codes.astype(np.int32) if len(values) < 2**31 else codes)
    return pa.DictionaryArray.from_arrays(indices, values).cast(values.type)


def _rejected_table(
    columns: dict[str, pa.ChunkedArray],
    idx: np.ndarray,
    reason: np.ndarray,
    source: str | pa.Array,
    now_us: int,
) -> pa.Table:
    if not len(idx):
        # Taking no rows of a chunked column still walks (and may combine) all its chunks.
        return rejected_arrow_schema().empty_table()
    text = [_as_text(_rows_taken(columns[name], idx)) for name in REQUIRED_COLUMNS]
    reasons = pa.DictionaryArray.from_arrays(
        pa.array(reason[idx]), pa.array(REASONS, pa.large_string())
    ).cast(pa.large_string())
    n = len(idx)
    return pa.Table.from_arrays(
        [
            *text,
            reasons,
            pa.repeat(pa.scalar(source, pa.large_string()), n)
            if isinstance(source, str)
            else source.take(pa.array(idx)).cast(pa.large_string()),
            _timestamps(np.full(n, now_us, dtype=np.int64)),
        ],
        schema=rejected_arrow_schema(),
    )


def _rows_taken(values: pa.ChunkedArray, idx: np.ndarray) -> pa.Array:
    """``values.take(idx)`` for sorted, non-empty ``idx``, one chunk at a time and decoded: the
    dictionaries of a dictionary-encoded column's chunks are never unified (Arrow cannot unify
    dictionaries that hold a null)."""
    parts, start = [], 0
    for chunk in values.chunks:
        stop = start + len(chunk)
        lo, hi = np.searchsorted(idx, [start, stop])
        if hi > lo:
            parts.append(decoded(chunk.take(pa.array(idx[lo:hi] - start))))
        start = stop
    return pa.concat_arrays(parts)


def _as_text(values: Column) -> Column:
    values = decoded(values)
    if pa.types.is_timestamp(values.type) and values.type.tz is None:
        # Arrow prints naive timestamps without a zone; say that they were taken as UTC.
        values = values.cast(pa.timestamp(values.type.unit, tz="UTC"))
    return values.cast(pa.large_string())
