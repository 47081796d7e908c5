"""Exact parsing of prices and quantities into int64 units of 1e-8.

Prices and quantities travel as int64 "units" of 1e-8: DECIMAL(18, 8) holds exactly the values
whose units fit in 18 digits, so representability is an integer check and nothing is ever
rounded. Decimal, integer, floating-point and numeric-text columns are read; text that is not a
number at all raises :class:`~ingest.reading.SchemaError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.tables import DECIMAL_PRECISION, DECIMAL_SCALE
from ingest.columns import (
    Column,
    bools,
    decoded,
    digits_to_ints,
    field,
    first_true,
    ints,
    is_text,
    lengths,
    text_scalar,
)
from ingest.reading import SchemaError

_MAX_DIGITS = DECIMAL_PRECISION  # DECIMAL(18, 8): |units| < 10**18
_POW10 = np.array([10**k for k in range(_MAX_DIGITS + 1)], dtype=np.int64)

_NUMBER_RE = (
    r"^(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?"
    r"(?:[eE](?P<esign>[+-]?)(?P<exp>[0-9]+))?$"
)
_NON_FINITE_RE = r"^[+-]?(nan|inf|infinity)$"
# The same grammar as _NUMBER_RE with at least one digit, as a yes/no match (no extraction).
_IS_NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def _not_a_number(name: str, values: Column, bad: np.ndarray) -> SchemaError:
    row = first_true(bad)
    return SchemaError(
        f"column {name!r} is not numeric: row {row + 1} (1-based, header not counted) holds "
        f"{values[row].as_py()!r} ({int(bad.sum())} such values); fix or empty those values "
        "(an empty value is treated as missing)"
    )


@dataclass
class Amount:
    """A parsed numeric column; ``units`` (value * 10**scale) is meaningful only where valid."""

    units: np.ndarray
    missing: np.ndarray
    non_finite: np.ndarray
    negative: np.ndarray
    zero: np.ndarray
    unrepresentable: np.ndarray

    @classmethod
    def all_missing(cls, n: int) -> Amount:
        no = np.zeros(n, dtype=bool)
        return cls(np.zeros(n, np.int64), ~no, no, no.copy(), no.copy(), no.copy())


def parse_amount(values: Column, name: str, scale: int = DECIMAL_SCALE) -> Amount:
    values = decoded(values)
    t = values.type
    if pa.types.is_null(t):
        return Amount.all_missing(len(values))
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
        non_finite = bools(pc.invert(pc.is_finite(values)))
        # Arrow renders floats as their shortest round-trip text, e.g. 0.1 -> "0.1".
        text = pc.if_else(pc.is_finite(values), values.cast(pa.large_string()), None)
        parsed = _parse_number_text(text, name, scale)
        parsed.missing &= ~non_finite
        parsed.non_finite |= non_finite
        return parsed
    if is_text(t):
        return _parse_number_text(values.cast(pa.large_string()), name, scale)
    raise SchemaError(
        f"column {name!r} has type {t}, which is not numeric; write {name} as a decimal, "
        "integer, floating-point or numeric-text column (decimal128(18, 8) keeps it exact)"
    )


def _unscaled(values: Column) -> np.ndarray | None:
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
            return ints(integers)
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
        missing = bools(pc.is_null(values))
        low[missing] = 0
        high[missing] = 0
    return low if np.array_equal(high, low >> 63) else None


def _decimal128_units(values: Column, scale: int) -> Amount | None:
    """Units of decimal128 values (:func:`_unscaled`, rescaled); None when some value needs
    more than 64 bits."""
    n = len(values)
    low = _unscaled(values)
    if low is None:
        return None
    missing = bools(pc.is_null(values)) if values.null_count else np.zeros(n, dtype=bool)
    # |units| < 10**(18 - shift) keeps the value inside DECIMAL(18, scale) after shifting.
    shift = scale - values.type.scale
    limit = _POW10[_MAX_DIGITS - shift]
    fits = (low > -limit) & (low < limit)
    units = low if fits.all() else np.where(fits, low, 0)
    if shift:
        units = units * _POW10[shift]
    return Amount(
        units=units,
        missing=missing,
        non_finite=np.zeros(n, dtype=bool),
        negative=low < 0,
        zero=(low == 0) & ~missing,
        unrepresentable=~fits,
    )


def _integer_units(values: Column, scale: int) -> Amount:
    missing = bools(pc.is_null(values))
    limit = 10 ** (_MAX_DIGITS - scale)
    if pa.types.is_unsigned_integer(values.type):
        raw = np.asarray(pc.fill_null(values.cast(pa.uint64()), 0).to_numpy(), dtype=np.uint64)
        fits = raw < np.uint64(limit)
        integers = np.where(fits, raw, 0).astype(np.int64)
    else:
        integers = ints(values)
        fits = (integers > -limit) & (integers < limit)
    return Amount(
        units=np.where(fits, integers, 0) * _POW10[scale],
        missing=missing,
        non_finite=np.zeros(len(values), dtype=bool),
        negative=(integers < 0) & ~missing,
        zero=(integers == 0) & ~missing,
        unrepresentable=~fits & ~missing,
    )


def _parse_plain_decimals(text: Column, scale: int) -> Amount | None:
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


def _grammar(text: Column) -> tuple[np.ndarray, np.ndarray, Column, np.ndarray]:
    """Of trimmed text: (blank, NaN or infinity, the parts of ``_NUMBER_RE``, not a number)."""
    missing = ints(pc.utf8_length(text), fill=0) == 0
    non_finite = bools(pc.match_substring_regex(text, _NON_FINITE_RE, ignore_case=True))
    parts = pc.extract_regex(text, _NUMBER_RE)
    digits = lengths(field(parts, "int")) + lengths(field(parts, "frac"))
    bad = ~missing & ~non_finite & (bools(pc.is_null(parts)) | (digits == 0))
    return missing, non_finite, parts, bad


def not_numbers(text: Column) -> np.ndarray:
    """Rows of (trimmed) text that :func:`parse_amount` refuses as not a number at all:
    neither blank, nor a number (sign, digits, fraction, exponent), nor NaN or infinity.

    Two yes/no matches, without the extraction :func:`parse_amount` needs (half the time).
    """
    blank = ints(pc.utf8_length(text), fill=0) == 0
    number = bools(pc.match_substring_regex(text, _IS_NUMBER_RE))
    non_finite = bools(pc.match_substring_regex(text, _NON_FINITE_RE, ignore_case=True))
    return ~blank & ~number & ~non_finite


def _parse_number_text(values: Column, name: str, scale: int) -> Amount:
    """Exact decimal parsing of text such as ``-12.50``, ``.5`` or ``1.5e-7``, vectorized.

    The digits (trailing zeros stripped) form an integer ``d`` and the value is
    ``d * 10**e``; it fits DECIMAL(18, scale) exactly iff ``e >= -scale`` and ``d`` has at most
    ``18 - scale - e`` digits, and then its units are ``d * 10**(e + scale)``.
    """
    text = pc.utf8_trim_whitespace(values)
    fast = _parse_plain_decimals(text, scale)
    if fast is not None:
        return fast
    missing, non_finite, parts, bad = _grammar(text)
    if bad.any():
        raise _not_a_number(name, values, bad)
    int_part, frac = field(parts, "int"), field(parts, "frac")
    frac_len = lengths(frac)

    digits = pc.binary_join_element_wise(int_part, frac, text_scalar(""))
    no_trailing = pc.utf8_rtrim(digits, characters="0")
    significant = pc.utf8_ltrim(no_trailing, characters="0")
    trailing = lengths(digits) - lengths(no_trailing)
    n_digits = lengths(significant)
    exp_digits = pc.utf8_ltrim(field(parts, "exp"), characters="0")
    # Exponents beyond 6 digits make the value 0, huge or tiny: clamping keeps the arithmetic safe.
    exp_len = lengths(exp_digits)
    exp_digits = pc.if_else(
        pc.greater(pc.utf8_length(exp_digits), 6), text_scalar("999999"), exp_digits
    )
    exponent = digits_to_ints(exp_digits)
    exponent = np.where(bools(pc.equal(field(parts, "esign"), "-")), -exponent, exponent)
    e = trailing - frac_len + exponent

    usable = ~missing & ~non_finite
    zero = usable & (n_digits == 0)
    negative = usable & ~zero & bools(pc.equal(field(parts, "sign"), "-"))
    fits = zero | ((e >= -scale) & (n_digits + e + scale <= _MAX_DIGITS))
    # The exponent was clamped only when it had > 6 digits, far past any fitting value.
    fits &= exp_len <= 6
    units = np.zeros(len(values), dtype=np.int64)
    mask = usable & fits & ~zero
    if mask.any():
        digit_values = ints(
            pc.if_else(pa.array(mask), significant, text_scalar("0")).cast(pa.int64())
        )
        units[mask] = digit_values[mask] * _POW10[(e + scale)[mask]]
        units = np.where(negative, -units, units)
    return Amount(
        units=units,
        missing=missing,
        non_finite=non_finite,
        negative=negative,
        zero=zero,
        unrepresentable=usable & ~fits,
    )


def decimal_from_units(
    units: np.ndarray,
    *,
    nulls: np.ndarray | None = None,
    precision: int = DECIMAL_PRECISION,
    scale: int = DECIMAL_SCALE,
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
