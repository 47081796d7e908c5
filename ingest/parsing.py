"""Parsing of the required columns into integers: codes, int64 units and microseconds.

Prices and quantities travel as int64 "units" of 1e-8: DECIMAL(18, 8) holds exactly the values
whose units fit in 18 digits, so representability is an integer check and nothing is ever
rounded. Parsing is vectorized (pyarrow.compute and numpy) so ten million rows take seconds.
Values that are not a number or timestamp at all raise :class:`~ingest.reading.SchemaError`;
values that parse but break a rule are flagged here and rejected by :mod:`ingest.rules`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.reading import SchemaError

_Column: TypeAlias = pa.Array | pa.ChunkedArray

SCALE = 8
"""Decimal places of price and quantity (DECIMAL(18, 8))."""
_MAX_DIGITS = 18  # DECIMAL(18, 8): |units| < 10**18
_POW10 = np.array([10**k for k in range(_MAX_DIGITS + 1)], dtype=np.int64)
_INT64_MAX = "9223372036854775807"
_US_PER_S = 1_000_000

_NUMBER_RE = (
    r"^(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?"
    r"(?:[eE](?P<esign>[+-]?)(?P<exp>[0-9]+))?$"
)
_NON_FINITE_RE = r"^[+-]?(nan|inf|infinity)$"
_TS_RE = (
    r"^(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ](?P<hm>[0-9]{2}:[0-9]{2})"
    r"(?::(?P<sec>[0-9]{2}))?(?:[.,](?P<frac>[0-9]+))?[ ]*"
    r"(?P<zone>[Zz]|(?P<zsign>[+-])(?P<zh>[0-9]{2})(?::?(?P<zm>[0-9]{2}))?)?$"
)
_TS_EXAMPLE = "2024-05-01T12:34:56.789012Z"


def _bools(values: _Column) -> np.ndarray:
    """Boolean numpy array from an Arrow boolean array; null counts as False."""
    if values.null_count:
        values = pc.fill_null(values, False)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)


def _ints(values: _Column, fill: int = 0) -> np.ndarray:
    values = values.cast(pa.int64())
    if values.null_count:
        values = pc.fill_null(values, fill)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def _lengths(values: _Column) -> np.ndarray:
    return _ints(pc.utf8_length(values))


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _decoded(values: _Column) -> _Column:
    if pa.types.is_dictionary(values.type):
        return values.cast(values.type.value_type)
    return values


def _text(values: _Column, name: str) -> _Column:
    """Text as large strings, or still dictionary-encoded when it comes that way (how
    :func:`~ingest.reading.read_trades_file` reads a Parquet file's text columns), so that
    each distinct value is looked at once instead of once per row."""
    t = values.type
    inner = t.value_type if pa.types.is_dictionary(t) else t
    if not (pa.types.is_null(inner) or _is_text(inner)):
        raise SchemaError(
            f"column {name!r} has type {inner}, expected text; write {name} as a string column"
        )
    return values if pa.types.is_dictionary(t) else values.cast(pa.large_string())


def _text_scalar(value: str) -> pa.Scalar:
    return pa.scalar(value, pa.large_string())


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _not_a_number(name: str, values: _Column, bad: np.ndarray) -> SchemaError:
    row = _first_true(bad)
    return SchemaError(
        f"column {name!r} is not numeric: row {row + 1} (1-based, header not counted) holds "
        f"{values[row].as_py()!r} ({int(bad.sum())} such values); fix or empty those values "
        "(an empty value is treated as missing)"
    )


def _field(parts: _Column, name: str) -> _Column:
    return pc.struct_field(parts, name)


def _dictionary_codes(values: _Column) -> tuple[np.ndarray, pa.Array]:
    """Per-row codes (-1 = null) into the distinct values, and those values."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.Array):
        return _ints(encoded.indices, fill=-1), encoded.dictionary
    encoded = encoded.unify_dictionaries()  # Arrow shares one dictionary today; not promised
    if not encoded.num_chunks:
        return np.zeros(0, np.int64), pa.array([], values.type)
    indices = pa.chunked_array([chunk.indices for chunk in encoded.chunks])
    return _ints(indices, fill=-1), encoded.chunk(0).dictionary


def _codes(values: _Column) -> tuple[np.ndarray, pa.Array]:
    """Per-row codes (-1 = null) into a dictionary of large strings, which may hold a value more
    than once, or a null: a dictionary-encoded column's own codes (each chunk's dictionary
    appended), so its rows are not hashed again; else :func:`_dictionary_codes`."""
    if not pa.types.is_dictionary(values.type):
        return _dictionary_codes(values)
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    codes = np.empty(len(values), dtype=np.int64)
    dictionaries: list[pa.Array] = []  # distinct dictionaries: chunks of a file often share one
    starts: list[int] = []  # the code of each one's first value
    row = 0
    for chunk in chunks:
        known = (i for i, d in enumerate(dictionaries) if d.equals(chunk.dictionary))
        which = next(known, None)
        if which is None:
            which = len(dictionaries)
            starts.append(starts[-1] + len(dictionaries[-1]) if dictionaries else 0)
            dictionaries.append(chunk.dictionary)
        indices = chunk.indices
        if indices.null_count:  # (an unsigned index type cannot hold -1)
            indices = pc.fill_null(indices.cast(pa.int64()), -1)
        out = codes[row : row + len(chunk)]
        out[:] = indices.to_numpy(zero_copy_only=False)
        if starts[which]:
            out[out >= 0] += starts[which]
        row += len(chunk)
    if not dictionaries:
        return codes, pa.array([], pa.large_string())
    return codes, pa.concat_arrays([d.cast(pa.large_string()) for d in dictionaries])


def _encode_key_text(values: _Column) -> tuple[np.ndarray, pa.Array]:
    """Codes into the stripped distinct values (-1 = null or blank), and those values.

    Strings repeat a lot (few exchanges and symbols), so strip the dictionary, not every row.
    """
    indices, dictionary = _codes(values)
    stripped, uniques = _dictionary_codes(pc.utf8_trim_whitespace(dictionary))
    blank = np.append(_bools(pc.equal(pc.utf8_length(uniques), 0)), True)  # -1 (null) is blank
    remap = np.append(np.where(blank[stripped], -1, stripped), -1)  # index -1 picks the last
    return np.take(remap, indices), uniques


def _parse_side(values: _Column) -> tuple[np.ndarray, np.ndarray]:
    """(is_buy, is_valid) after stripping and lower-casing."""
    if not values.null_count and not pa.types.is_dictionary(values.type):
        # Most feeds write exactly "buy" or "sell": two comparisons instead of hashing each value.
        buy = _bools(pc.equal(values, "buy"))
        if bool(np.all(buy | _bools(pc.equal(values, "sell")))):
            return buy, np.ones(len(buy), dtype=bool)
    indices, dictionary = _codes(values)
    normal = pc.utf8_lower(pc.utf8_trim_whitespace(dictionary))
    buy = np.append(_bools(pc.equal(normal, "buy")), False)  # index -1 (a null) picks False
    sell = np.append(_bools(pc.equal(normal, "sell")), False)
    return np.take(buy, indices), np.take(buy | sell, indices)


@dataclass
class _Amount:
    """A parsed numeric column; ``units`` (value * 10**scale) is meaningful only where valid."""

    units: np.ndarray
    missing: np.ndarray
    non_finite: np.ndarray
    negative: np.ndarray
    zero: np.ndarray
    unrepresentable: np.ndarray

    @classmethod
    def all_missing(cls, n: int) -> _Amount:
        no = np.zeros(n, dtype=bool)
        return cls(np.zeros(n, np.int64), ~no, no, no.copy(), no.copy(), no.copy())


def _parse_amount(values: _Column, name: str, scale: int = SCALE) -> _Amount:
    values = _decoded(values)
    t = values.type
    if pa.types.is_null(t):
        return _Amount.all_missing(len(values))
    if pa.types.is_decimal128(t) and t.scale <= scale:
        fast = _decimal128_units(values, scale)
        if fast is not None:
            return fast
    if pa.types.is_decimal(t):
        return _parse_number_text(values.cast(pa.large_string()), name, scale)
    if pa.types.is_integer(t):
        return _integer_units(values, scale)
    if pa.types.is_floating(t):
        if pa.types.is_float16(t):
            values = values.cast(pa.float32())
        non_finite = _bools(pc.invert(pc.is_finite(values)))
        # Arrow renders floats as their shortest round-trip text, e.g. 0.1 -> "0.1".
        text = pc.if_else(pc.is_finite(values), values.cast(pa.large_string()), None)
        parsed = _parse_number_text(text, name, scale)
        parsed.missing &= ~non_finite
        parsed.non_finite |= non_finite
        return parsed
    if _is_text(t):
        return _parse_number_text(values.cast(pa.large_string()), name, scale)
    raise SchemaError(
        f"column {name!r} has type {t}, which is not numeric; write {name} as a decimal, "
        "integer, floating-point or numeric-text column (decimal128(18, 8) keeps it exact)"
    )


def _unscaled(values: _Column) -> np.ndarray | None:
    """The unscaled integers of decimal128 values (0 where null), or None when one needs more
    than 64 bits."""
    t = values.type
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    if t.precision <= _MAX_DIGITS:
        # The same words read with scale 0 are the unscaled integers; Arrow's checked cast
        # to int64 is a single pass (and refuses a word beyond 64 bits: the general path).
        whole = pa.decimal128(t.precision, 0)
        integers = pa.chunked_array([c.view(whole) for c in chunks], whole)
        try:
            return _ints(integers)
        except pa.ArrowInvalid:
            pass
    words = [
        np.frombuffer(c.buffers()[1], np.int64, 2 * (c.offset + len(c))).reshape(-1, 2)[c.offset :]
        for c in chunks
        if len(c)
    ]
    low = np.concatenate([w[:, 0] for w in words]) if words else np.zeros(0, np.int64)
    high = np.concatenate([w[:, 1] for w in words]) if words else np.zeros(0, np.int64)
    if values.null_count:
        missing = _bools(pc.is_null(values))
        low[missing] = 0
        high[missing] = 0
    return low if np.array_equal(high, low >> 63) else None


def _decimal128_units(values: _Column, scale: int) -> _Amount | None:
    """Units of decimal128 values (:func:`_unscaled`, rescaled); None when some value needs
    more than 64 bits."""
    n = len(values)
    low = _unscaled(values)
    if low is None:
        return None
    missing = _bools(pc.is_null(values)) if values.null_count else np.zeros(n, dtype=bool)
    # |units| < 10**(18 - shift) keeps the value inside DECIMAL(18, scale) after shifting.
    shift = scale - values.type.scale
    limit = _POW10[_MAX_DIGITS - shift]
    fits = (low > -limit) & (low < limit)
    units = low if fits.all() else np.where(fits, low, 0)
    if shift:
        units = units * _POW10[shift]
    return _Amount(
        units=units,
        missing=missing,
        non_finite=np.zeros(n, dtype=bool),
        negative=low < 0,
        zero=(low == 0) & ~missing,
        unrepresentable=~fits,
    )


def _integer_units(values: _Column, scale: int) -> _Amount:
    missing = _bools(pc.is_null(values))
    limit = 10 ** (_MAX_DIGITS - scale)
    if pa.types.is_unsigned_integer(values.type):
        raw = np.asarray(pc.fill_null(values.cast(pa.uint64()), 0).to_numpy(), dtype=np.uint64)
        fits = raw < np.uint64(limit)
        ints = np.where(fits, raw, 0).astype(np.int64)
    else:
        ints = _ints(values)
        fits = (ints > -limit) & (ints < limit)
    return _Amount(
        units=np.where(fits, ints, 0) * _POW10[scale],
        missing=missing,
        non_finite=np.zeros(len(values), dtype=bool),
        negative=(ints < 0) & ~missing,
        zero=(ints == 0) & ~missing,
        unrepresentable=~fits & ~missing,
    )


def _parse_plain_decimals(text: _Column, scale: int) -> _Amount | None:
    """The common case in a few C++ passes, or None to take the general path.

    Arrow's decimal parser reads the same grammar as ``_NUMBER_RE`` and fails for the whole array
    on anything else (NaN, garbage, a digit beyond ``scale``), so no row can get a different
    verdict here than on the general path.
    """
    blank_as_null = pc.if_else(pc.equal(text, ""), pa.scalar(None, text.type), text)
    try:
        decimals = blank_as_null.cast(pa.decimal128(38, scale))
    except pa.ArrowInvalid:
        return None
    return _decimal128_units(decimals, scale)


def _parse_number_text(values: _Column, name: str, scale: int) -> _Amount:
    """Exact decimal parsing of text such as ``-12.50``, ``.5`` or ``1.5e-7``, vectorized.

    The digits (trailing zeros stripped) form an integer ``d`` and the value is
    ``d * 10**e``; it fits DECIMAL(18, scale) exactly iff ``e >= -scale`` and ``d`` has at most
    ``18 - scale - e`` digits, and then its units are ``d * 10**(e + scale)``.
    """
    text = pc.utf8_trim_whitespace(values)
    fast = _parse_plain_decimals(text, scale)
    if fast is not None:
        return fast
    missing = _ints(pc.utf8_length(text), fill=0) == 0
    non_finite = _bools(pc.match_substring_regex(text, _NON_FINITE_RE, ignore_case=True))
    parts = pc.extract_regex(text, _NUMBER_RE)
    int_part, frac = _field(parts, "int"), _field(parts, "frac")
    int_len, frac_len = _lengths(int_part), _lengths(frac)
    bad = ~missing & ~non_finite & (_bools(pc.is_null(parts)) | (int_len + frac_len == 0))
    if bad.any():
        raise _not_a_number(name, values, bad)

    digits = pc.binary_join_element_wise(int_part, frac, _text_scalar(""))
    no_trailing = pc.utf8_rtrim(digits, characters="0")
    significant = pc.utf8_ltrim(no_trailing, characters="0")
    trailing = _lengths(digits) - _lengths(no_trailing)
    n_digits = _lengths(significant)
    exp_digits = pc.utf8_ltrim(_field(parts, "exp"), characters="0")
    # Exponents beyond 6 digits make the value 0, huge or tiny: clamping keeps the arithmetic safe.
    exp_len = _lengths(exp_digits)
    exp_digits = pc.if_else(
        pc.greater(pc.utf8_length(exp_digits), 6), _text_scalar("999999"), exp_digits
    )
    exponent = _number(exp_digits)
    exponent = np.where(_bools(pc.equal(_field(parts, "esign"), "-")), -exponent, exponent)
    e = trailing - frac_len + exponent

    usable = ~missing & ~non_finite
    zero = usable & (n_digits == 0)
    negative = usable & ~zero & _bools(pc.equal(_field(parts, "sign"), "-"))
    fits = zero | ((e >= -scale) & (n_digits + e + scale <= _MAX_DIGITS))
    # The exponent was clamped only when it had > 6 digits, far past any fitting value.
    fits &= exp_len <= 6
    units = np.zeros(len(values), dtype=np.int64)
    mask = usable & fits & ~zero
    if mask.any():
        digit_values = _ints(
            pc.if_else(pa.array(mask), significant, _text_scalar("0")).cast(pa.int64())
        )
        units[mask] = digit_values[mask] * _POW10[(e + scale)[mask]]
        units = np.where(negative, -units, units)
    return _Amount(
        units=units,
        missing=missing,
        non_finite=non_finite,
        negative=negative,
        zero=zero,
        unrepresentable=usable & ~fits,
    )


@dataclass
class _TradeId:
    value: np.ndarray
    missing: np.ndarray
    invalid: np.ndarray


def _parse_trade_id(values: _Column) -> _TradeId:
    values = _decoded(values)
    t = values.type
    if pa.types.is_integer(t):
        missing = _bools(pc.is_null(values))
        if pa.types.is_unsigned_integer(t):
            raw = np.asarray(pc.fill_null(values.cast(pa.uint64()), 0).to_numpy(), np.uint64)
            too_big = raw > np.uint64(np.iinfo(np.int64).max)
            ids = np.where(too_big, 0, raw).astype(np.int64)
            return _TradeId(ids, missing, too_big)
        ids = _ints(values)
        return _TradeId(ids, missing, ids < 0)
    if pa.types.is_floating(t):
        x = np.asarray(pc.fill_null(values.cast(pa.float64()), 0.0).to_numpy(), np.float64)
        missing = _bools(pc.is_null(values))
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(x) & (x >= 0) & (x < 2.0**63) & (np.floor(x) == x)
        return _TradeId(np.where(ok, x, 0).astype(np.int64), missing, ~ok & ~missing)
    if pa.types.is_null(t) or pa.types.is_decimal(t) or _is_text(t):
        text = values.cast(pa.large_string())
        parsed = _parse_amount(text, "trade_id", scale=0)
        invalid = parsed.non_finite | parsed.negative | parsed.unrepresentable
        ids = parsed.units
        # 19-digit ids still fit int64 but not the 18-digit decimal check above.
        stripped = pc.utf8_ltrim(pc.utf8_trim_whitespace(text), characters="0")
        big = (
            parsed.unrepresentable
            & ~parsed.negative
            & _bools(pc.match_substring_regex(stripped, r"^[0-9]{19}$"))
            & _bools(pc.less_equal(stripped, _INT64_MAX))
        )
        if big.any():
            ids = ids.copy()
            ids[big] = _ints(
                pc.if_else(pa.array(big), stripped, _text_scalar("0")).cast(pa.int64())
            )[big]
            invalid &= ~big
        return _TradeId(ids, parsed.missing, invalid & ~parsed.missing)
    raise SchemaError(
        f"column 'trade_id' has type {t}, which is not numeric; write trade_id as an integer "
        "column (int64)"
    )


@dataclass
class _Timestamps:
    us: np.ndarray
    missing: np.ndarray
    sub_us: np.ndarray


def _parse_ts(values: _Column) -> _Timestamps:
    values = _decoded(values)
    t = values.type
    if pa.types.is_null(t):
        n = len(values)
        return _Timestamps(np.zeros(n, np.int64), np.ones(n, bool), np.zeros(n, bool))
    if pa.types.is_timestamp(t):
        # Arrow keeps instants as UTC whatever the zone; a naive timestamp is taken as UTC, as
        # core.time allows for input data (the edge), so its raw values already are UTC.
        missing = _bools(pc.is_null(values))
        raw = _ints(values.cast(pa.int64()))
        if t.unit == "ns":
            return _Timestamps(raw // 1000, missing, (raw % 1000 != 0) & ~missing)
        per_unit = {"s": _US_PER_S, "ms": 1000, "us": 1}[t.unit]
        if per_unit == 1:
            return _Timestamps(raw, missing, np.zeros_like(missing))
        # Clamped values are centuries out of range and get rejected as too old / in the future.
        limit = np.iinfo(np.int64).max // per_unit
        return _Timestamps(np.clip(raw, -limit, limit) * per_unit, missing, np.zeros_like(missing))
    if _is_text(t):
        return _parse_ts_text(values.cast(pa.large_string()))
    raise SchemaError(
        f"column 'ts' has type {t}: expected a timestamp or ISO-8601 text such as "
        f"{_TS_EXAMPLE!r}; convert it (epoch numbers: to a timestamp type) before ingesting"
    )


def _parse_ts_text(values: _Column) -> _Timestamps:
    text = pc.utf8_trim_whitespace(values)
    missing = _ints(pc.utf8_length(text), fill=0) == 0
    parts = pc.extract_regex(text, _TS_RE)
    bad = ~missing & _bools(pc.is_null(parts))
    if bad.any():
        raise _not_a_timestamp(values, bad)
    seconds = _field(parts, "sec")
    seconds = pc.if_else(pc.equal(seconds, ""), _text_scalar("00"), seconds)
    t, colon, nothing = _text_scalar("T"), _text_scalar(":"), _text_scalar("")
    wall_text = pc.binary_join_element_wise(
        _field(parts, "date"), t, _field(parts, "hm"), colon, seconds, nothing
    )
    # Missing values get a harmless placeholder so the cast only fails on real garbage.
    wall_text = pc.if_else(pa.array(missing), _text_scalar("2000-01-01T00:00:00"), wall_text)
    wall = _cast_or_locate(wall_text, pa.timestamp("s"), lambda bad: _not_a_timestamp(values, bad))
    frac = _field(parts, "frac")
    micros = _number(pc.utf8_slice_codeunits(pc.utf8_rpad(frac, 6, "0"), 0, 6))
    beyond = pc.utf8_rtrim(pc.utf8_slice_codeunits(frac, 6), characters="0")
    zone_minutes = _number(_field(parts, "zh")) * 60 + _number(_field(parts, "zm"))
    zone_minutes = np.where(_bools(pc.equal(_field(parts, "zsign"), "-")), -1, 1) * zone_minutes
    us = (_ints(wall.cast(pa.int64())) - zone_minutes * 60) * _US_PER_S + micros
    sub_us = (_ints(pc.utf8_length(beyond)) > 0) & ~missing
    return _Timestamps(np.where(missing, 0, us), missing, sub_us)


def _number(digits: _Column) -> np.ndarray:
    """int64 of unsigned digit strings; empty or null gives 0."""
    return _ints(pc.if_else(pc.equal(digits, ""), _text_scalar("0"), digits).cast(pa.int64()))


def _not_a_timestamp(values: _Column, bad: np.ndarray) -> SchemaError:
    row = _first_true(bad)
    return SchemaError(
        f"column 'ts' is not a timestamp: row {row + 1} (1-based, header not counted) holds "
        f"{values[row].as_py()!r}; write ISO-8601 such as {_TS_EXAMPLE!r} (no zone = UTC)"
    )


def _cast_or_locate(
    values: _Column, target: pa.DataType, error: Callable[[np.ndarray], SchemaError]
) -> _Column:
    """Cast, or raise ``error`` for the first value that fails (found by bisection, in C)."""
    try:
        return values.cast(target)
    except pa.ArrowInvalid:
        pass
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            values.slice(lo, mid - lo).cast(target)
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    bad = np.zeros(len(values), dtype=bool)
    bad[lo] = True
    raise error(bad)


def decimal_from_units(
    units: np.ndarray, *, nulls: np.ndarray | None = None, precision: int = 18, scale: int = SCALE
) -> pa.Array:
    """A decimal128 array of ``units * 10**-scale``, built without Python objects.

    Args:
        units: int64 values, ``|units| < 10**precision``; entries under ``nulls`` are ignored.
        nulls: Optional mask of null entries.
        precision: Decimal precision of the result.
        scale: Decimal scale of the result.
    """
    # A decimal128 value is a little-endian 128-bit word: the int64 as its low half and its
    # sign as the high half. Read with the wanted scale, the words are divided by 10**scale.
    words = np.empty((len(units), 2), dtype=np.int64)
    words[:, 0] = units
    np.right_shift(units, 63, out=words[:, 1])
    validity = None if nulls is None else pa.array(~nulls, type=pa.bool_()).buffers()[1]
    return pa.Array.from_buffers(
        pa.decimal128(precision, scale), len(units), [validity, pa.py_buffer(words)]
    )


@dataclass
class ParsedTrades:
    """The required columns of an input, parsed; every array has one entry per input row.

    Exchanges and symbols are codes into their stripped distinct values (-1 = null or blank).
    """

    exchange_codes: np.ndarray
    exchanges: pa.Array
    symbol_codes: np.ndarray
    symbols: pa.Array
    trade_id: _TradeId
    price: _Amount
    quantity: _Amount
    ts: _Timestamps
    is_buy: np.ndarray
    side_ok: np.ndarray

    def __len__(self) -> int:
        return len(self.exchange_codes)


def parse_trades(columns: Mapping[str, _Column]) -> ParsedTrades:
    """Parse the :data:`~ingest.reading.REQUIRED_COLUMNS` of an input.

    Raises:
        SchemaError: a column of an unusable type, or a value that is not a number / timestamp
            at all (the first such column, in the order parsed here).
    """
    exchange_codes, exchanges = _encode_key_text(_text(columns["exchange"], "exchange"))
    symbol_codes, symbols = _encode_key_text(_text(columns["symbol"], "symbol"))
    trade_id = _parse_trade_id(columns["trade_id"])
    price = _parse_amount(columns["price"], "price")
    quantity = _parse_amount(columns["quantity"], "quantity")
    ts = _parse_ts(columns["ts"])
    is_buy, side_ok = _parse_side(_text(columns["side"], "side"))
    return ParsedTrades(
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
