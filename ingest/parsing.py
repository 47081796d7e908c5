"""Parsing of the required columns into integers: codes, int64 units and microseconds.

Prices and quantities travel as int64 "units" of 1e-8: DECIMAL(18, 8) holds exactly the values
whose units fit in 18 digits, so representability is an integer check and nothing is ever
rounded. Parsing is vectorized (pyarrow.compute and numpy) so ten million rows take seconds.
Values that are not a number or timestamp at all raise :class:`~ingest.reading.SchemaError`;
values that parse but break a rule are flagged here and rejected by :mod:`ingest.rules`.

Parsing of amounts (:mod:`ingest.amounts`) and timestamps (:mod:`ingest.timestamps`) has a
module each; the Arrow helpers they share are in :mod:`ingest.columns`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.amounts import Amount, parse_amount
from ingest.columns import (
    Column,
    bools,
    codes,
    decoded,
    dictionary_codes,
    ints,
    is_text,
    text_column,
    text_scalar,
)
from ingest.ids import (
    TradeId,
    looks_like_text_ids,
    split_text_ids,
    synthetic_ids,
    with_synthetic_ids,
    with_text_ids,
)
from ingest.reading import SchemaError
from ingest.timestamps import Timestamps, parse_ts

_INT64_MAX = "9223372036854775807"


def encode_key_text(values: Column) -> tuple[np.ndarray, pa.Array]:
    """Codes into the stripped distinct values (-1 = null or blank), and those values.

    Strings repeat a lot (few exchanges and symbols), so strip the dictionary, not every row.
    """
    indices, dictionary = codes(values)
    stripped, uniques = dictionary_codes(pc.utf8_trim_whitespace(dictionary))
    blank = np.append(bools(pc.equal(pc.utf8_length(uniques), 0)), True)  # -1 (null) is blank
    remap = np.append(np.where(blank[stripped], -1, stripped), -1)  # index -1 picks the last
    return np.take(remap, indices), uniques


def parse_side(values: Column) -> tuple[np.ndarray, np.ndarray]:
    """(is_buy, is_valid) after stripping and lower-casing."""
    if not values.null_count and not pa.types.is_dictionary(values.type):
        # Most feeds write exactly "buy" or "sell": two comparisons instead of hashing each value.
        buy = bools(pc.equal(values, "buy"))
        if bool(np.all(buy | bools(pc.equal(values, "sell")))):
            return buy, np.ones(len(buy), dtype=bool)
    indices, dictionary = codes(values)
    normal = pc.utf8_lower(pc.utf8_trim_whitespace(dictionary))
    buy = np.append(bools(pc.equal(normal, "buy")), False)  # index -1 (a null) picks False
    sell = np.append(bools(pc.equal(normal, "sell")), False)
    return np.take(buy, indices), np.take(buy | sell, indices)


def _parse_trade_id(values: Column) -> TradeId:
    values = decoded(values)
    t = values.type
    if pa.types.is_integer(t):
        missing = bools(pc.is_null(values))
        if pa.types.is_unsigned_integer(t):
            raw = np.asarray(pc.fill_null(values.cast(pa.uint64()), 0).to_numpy(), np.uint64)
            too_big = raw > np.uint64(np.iinfo(np.int64).max)
            ids = np.where(too_big, 0, raw).astype(np.int64)
            return TradeId(ids, missing, too_big)
        ids = ints(values)
        return TradeId(ids, missing, ids < 0)
    if pa.types.is_floating(t):
        x = np.asarray(pc.fill_null(values.cast(pa.float64()), 0.0).to_numpy(), np.float64)
        missing = bools(pc.is_null(values))
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(x) & (x >= 0) & (x < 2.0**63) & (np.floor(x) == x)
        return TradeId(np.where(ok, x, 0).astype(np.int64), missing, ~ok & ~missing)
    if is_text(t):
        text = values.cast(pa.large_string())
        if not looks_like_text_ids(text):
            try:
                return _numeric_text_ids(text)
            except SchemaError:
                pass
        # Some ids are not numbers: text ids (the rest still parse as numbers).
        words, numbers = split_text_ids(text)
        return with_text_ids(_numeric_text_ids(numbers), text, words)
    if pa.types.is_decimal(t):
        parsed = parse_amount(values, "trade_id", scale=0)
        if not parsed.unrepresentable.any():
            # What the ids' text would give (the same parse), without writing them as text.
            invalid = (parsed.non_finite | parsed.negative) & ~parsed.missing
            return TradeId(parsed.units, parsed.missing, invalid)
    if pa.types.is_null(t) or pa.types.is_decimal(t):
        return _numeric_text_ids(values.cast(pa.large_string()))
    raise SchemaError(
        f"column 'trade_id' has type {t}, which is neither numeric nor text; write trade_id "
        "as an integer column (int64) or a text column"
    )


def _numeric_text_ids(text: Column) -> TradeId:
    """Ids from text (or decimals as text) that is numbers, blanks and nulls only.

    Raises:
        SchemaError: some value is not a number at all.
    """
    parsed = parse_amount(text, "trade_id", scale=0)
    invalid = parsed.non_finite | parsed.negative | parsed.unrepresentable
    ids = parsed.units
    if parsed.unrepresentable.any():
        # 19-digit ids still fit int64 but not the 18-digit decimal check above.
        stripped = pc.utf8_ltrim(pc.utf8_trim_whitespace(text), characters="0")
        big = (
            parsed.unrepresentable
            & ~parsed.negative
            & bools(pc.match_substring_regex(stripped, r"^[0-9]{19}$"))
            & bools(pc.less_equal(stripped, _INT64_MAX))
        )
        ids = ids.copy()
        ids[big] = ints(pc.if_else(pa.array(big), stripped, text_scalar("0")).cast(pa.int64()))[big]
        invalid &= ~big
    return TradeId(ids, parsed.missing, invalid & ~parsed.missing)


@dataclass
class ParsedTrades:
    """The required columns of an input, parsed; every array has one entry per input row.

    Exchanges and symbols are codes into their stripped distinct values (-1 = null or blank).
    """

    exchange_codes: np.ndarray
    exchanges: pa.Array
    symbol_codes: np.ndarray
    symbols: pa.Array
    trade_id: TradeId
    price: Amount
    quantity: Amount
    ts: Timestamps
    is_buy: np.ndarray
    side_ok: np.ndarray

    def __len__(self) -> int:
        return len(self.exchange_codes)


def parse_trades(
    columns: Mapping[str, Column], *, synthesize_missing_ids: bool | np.ndarray = False
) -> ParsedTrades:
    """Parse the :data:`~ingest.reading.REQUIRED_COLUMNS` of an input.

    A missing trade id stays missing (a rejected row), or with ``synthesize_missing_ids`` (for
    every row, or the rows where a boolean array is true) becomes a synthetic text id
    (:func:`~ingest.ids.synthetic_ids`).

    Raises:
        SchemaError: a column of an unusable type, or a value that is not a number / timestamp
            at all (the first such column, in the order parsed here).
    """
    exchange_codes, exchanges = encode_key_text(text_column(columns["exchange"], "exchange"))
    symbol_codes, symbols = encode_key_text(text_column(columns["symbol"], "symbol"))
    trade_id = _parse_trade_id(columns["trade_id"])
    price = parse_amount(columns["price"], "price")
    quantity = parse_amount(columns["quantity"], "quantity")
    ts = parse_ts(columns["ts"])
    is_buy, side_ok = parse_side(text_column(columns["side"], "side"))
    parsed = ParsedTrades(
        exchange_codes=exchange_codes,
        exchanges=exchanges,
        symbol_codes=symbol_codes,
        symbols=symbols,
        trade_id=trade_id,
        price=price,
        quantity=quantity,
        ts=ts,
        is_buy=is_buy,
        side_ok=side_ok,
    )
    wanted = trade_id.missing & synthesize_missing_ids
    if wanted.any():
        parsed.trade_id = _synthesized(parsed, wanted)
    return parsed


def _synthesized(parsed: ParsedTrades, wanted: np.ndarray) -> TradeId:
    """The trade ids of ``parsed`` with a synthetic id for each ``wanted`` missing one."""
    rows = np.flatnonzero(wanted)
    ids = synthetic_ids(
        parsed.exchange_codes[rows],
        parsed.exchanges,
        parsed.symbol_codes[rows],
        parsed.symbols,
        parsed.ts.us[rows],
        parsed.price.units[rows],
        parsed.quantity.units[rows],
        parsed.is_buy[rows],
    )
    return with_synthetic_ids(parsed.trade_id, rows, ids)
