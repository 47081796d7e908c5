"""Trade ids: a number (``trade_id``) or the exchange's text (``trade_id_text``), and synthetic
ids for trades that come without one.

An id that reads as a number (what :func:`~ingest.amounts.parse_amount` reads: digits with an
optional sign, fraction or exponent) is a number, exactly as before text ids existed, so a file
ingested then is still recognised when it is delivered again. Any other non-blank text (a UUID,
``ETH-123456``) is a text id, kept as given after stripping surrounding whitespace. Exactly one
of the two columns is set on a stored trade; the decision and the tie order are in
docs/architecture.md ("Trade ids").

A missing id is rejected (``missing_trade_id``) unless the caller asks for synthetic ids
(:func:`synthetic_ids`, ``ingest(..., synthesize_missing_ids=True)``): a text id made from the
trade's parsed content and its occurrence among identical trades of the same delivery.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.tables import MAX_TRADE_ID_LENGTH
from ingest.amounts import not_numbers
from ingest.columns import Column, lengths, text_scalar

SYNTHETIC_PREFIX = "~"
"""First character of a synthetic id (never a number, so never read as one)."""

_NO_TEXT = pa.scalar(None, pa.large_string())


@dataclass
class TradeId:
    """A parsed trade_id column, one entry per row.

    ``value`` is meaningful where the id is a number; ``text`` (None when no row has a text
    id) holds the stripped text id of the rows flagged in ``is_text`` and null elsewhere.
    """

    value: np.ndarray
    missing: np.ndarray
    invalid: np.ndarray
    text: pa.Array | pa.ChunkedArray | None = None
    is_text: np.ndarray | None = None

    def text_rows(self) -> np.ndarray:
        """Mask of the rows whose id is text (all False when none is)."""
        if self.is_text is None:
            return np.zeros(len(self.value), dtype=bool)
        return self.is_text


def looks_like_text_ids(text: Column) -> bool:
    """Whether the first non-blank value (of the first thousand) is a text id: a feed's ids
    are all text or all numbers, so one value tells which parse to try first (either way the
    result is exact)."""
    head = pc.utf8_trim_whitespace(pc.drop_null(text).slice(0, 1024))
    filled = head.filter(pc.greater(pc.utf8_length(head), 0))
    return bool(len(filled)) and bool(not_numbers(filled.slice(0, 1))[0])


def split_text_ids(text: Column) -> tuple[np.ndarray, Column]:
    """(mask of the rows of ``text`` that are text ids, ``text`` with those rows null).

    What is left (numbers, blanks, nulls) parses as a numeric id column.
    """
    trimmed = pc.utf8_trim_whitespace(text)
    words = not_numbers(trimmed)
    return words, pc.if_else(pa.array(words), _NO_TEXT, text)


def with_text_ids(numeric: TradeId, text: Column, words: np.ndarray) -> TradeId:
    """``numeric`` (parsed from the rows that are not text ids) plus the text ids in ``words``;
    one longer than :data:`~core.tables.MAX_TRADE_ID_LENGTH` is invalid."""
    trimmed = pc.utf8_trim_whitespace(text)
    kept = pc.if_else(pa.array(words), trimmed, text_scalar(""))
    too_long = words & (lengths(kept) > MAX_TRADE_ID_LENGTH)
    is_text = words & ~too_long
    return TradeId(
        value=numeric.value,
        missing=numeric.missing & ~words,
        invalid=numeric.invalid | too_long,
        text=pc.if_else(pa.array(is_text), trimmed, _NO_TEXT),
        is_text=is_text,
    )


def with_synthetic_ids(trade_id: TradeId, rows: np.ndarray, ids: pa.Array) -> TradeId:
    """``trade_id`` with the text ids ``ids`` given to ``rows`` (rows whose id is missing)."""
    n = len(trade_id.value)
    is_text = trade_id.text_rows().copy()
    is_text[rows] = True
    at = np.full(n, -1, dtype=np.int64)
    at[rows] = np.arange(len(rows))
    synthetic = pa.array(ids).take(pa.array(at, mask=at < 0))
    text = synthetic if trade_id.text is None else pc.coalesce(trade_id.text, synthetic)
    missing = trade_id.missing.copy()
    missing[rows] = False
    return TradeId(trade_id.value, missing, trade_id.invalid, text, is_text)


def _text_hashes(values: pa.Array) -> np.ndarray:
    """A stable 64-bit hash of each distinct text value (and 0 for index -1, a missing one)."""
    out = [
        int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little")
        for v in values.to_pylist()
    ]
    return np.array([*out, 0], dtype=np.uint64)


def _mix(h: np.ndarray, values: np.ndarray) -> np.ndarray:
    """One round of splitmix64 over ``h ^ values`` (uint64, wrapping)."""
    z = (h ^ values.astype(np.uint64)) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def synthetic_ids(
    exchange_codes: np.ndarray,
    exchanges: pa.Array,
    symbol_codes: np.ndarray,
    symbols: pa.Array,
    ts_us: np.ndarray,
    price_units: np.ndarray,
    quantity_units: np.ndarray,
    is_buy: np.ndarray,
) -> pa.Array:
    """A text id for each row: ``~<hash>.<n>``, where the hash is a 64-bit hash of the row's
    parsed content (exchange, symbol, ts, price, quantity, side) and ``n`` counts the earlier
    rows of this delivery with the same hash (0 for the first).

    The same delivery gives the same ids again, so a re-delivery is a duplicate; two identical
    trades of one delivery get ``.0`` and ``.1``, so neither is lost. Limit: two identical trades
    (same microsecond, price, quantity and side) delivered in two different deliveries get the
    same id, and the second is taken for a duplicate of the first.

    Args:
        exchange_codes, symbol_codes: per row, a code into ``exchanges`` / ``symbols``
            (-1: missing; such rows are rejected anyway).
        exchanges, symbols: the distinct stripped values.
        ts_us, price_units, quantity_units, is_buy: the parsed content of each row.
    """
    h = np.full(len(ts_us), 0x6F686C6376, dtype=np.uint64)  # "ohlcv"
    with np.errstate(over="ignore"):
        h = _mix(h, _text_hashes(exchanges)[exchange_codes])
        h = _mix(h, _text_hashes(symbols)[symbol_codes])
        for values in (ts_us, price_units, quantity_units, is_buy):
            h = _mix(h, values.view(np.uint64) if values.dtype == np.int64 else values)
    order = np.argsort(h, kind="stable")  # rows of one hash keep their input order
    ordered = h[order]
    starts = np.ones(len(h), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    position = np.arange(len(h))
    first = np.maximum.accumulate(np.where(starts, position, 0))
    occurrence = np.empty(len(h), dtype=np.int64)
    occurrence[order] = position - first
    return pc.binary_join_element_wise(
        text_scalar(SYNTHETIC_PREFIX),
        pa.array(h).cast(pa.large_string()),
        text_scalar("."),
        pa.array(occurrence).cast(pa.large_string()),
        text_scalar(""),
    )
