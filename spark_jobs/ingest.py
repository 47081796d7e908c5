"""Upstream writer: validate raw trades and append them to Iceberg with PyIceberg (no Spark).

Every input row ends up in exactly one place: appended to ``trades``, dropped as an exact
duplicate of a row already kept, or appended to ``trades_rejected`` with one reason code. The
work is vectorized (pyarrow.compute and numpy) so ten million rows take seconds, not minutes.

Prices and quantities travel as int64 "units" of 1e-8 internally: DECIMAL(18, 8) holds exactly the
values whose units fit in 18 digits, so representability is an integer check and nothing is ever
rounded.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
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

from spark_jobs.tables import (
    TRADES,
    TRADES_REJECTED,
    rejected_arrow_schema,
    trades_arrow_schema,
)

_Column: TypeAlias = pa.Array | pa.ChunkedArray

REQUIRED_COLUMNS = ("exchange", "symbol", "trade_id", "price", "quantity", "side", "ts")

# Order matters: a row gets the first reason that applies.
REASONS = (
    "missing_exchange",
    "missing_symbol",
    "missing_trade_id",
    "invalid_trade_id",
    "missing_price",
    "missing_quantity",
    "missing_ts",
    "non_finite_price",
    "non_finite_quantity",
    "non_positive_price",
    "non_positive_quantity",
    "price_precision",
    "quantity_precision",
    "invalid_side",
    "ts_in_future",
    "ts_too_old",
    "ts_precision",
    "conflicting_duplicate",
)
_CONFLICT = REASONS.index("conflicting_duplicate")

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


@dataclass(frozen=True)
class IngestResult:
    """What one ingest did. ``rows_in == accepted + duplicates + rejected`` always holds."""

    rows_in: int
    accepted: int
    duplicates: int
    rejected: int
    rejected_by_reason: dict[str, int]
    """Non-zero counts only, in rule order."""
    trades_snapshot_id: int | None
    """Snapshot of the ``trades`` append; None when nothing was appended."""


class SchemaError(ValueError):
    """The input as a whole has the wrong shape; nothing was written."""


# --------------------------------------------------------------------------------------------
# Reading files


def read_trades_file(path: Path) -> pa.Table:
    """Read a trades file: Parquet (``.parquet``/``.pq``) or CSV (``.csv``), chosen by suffix.

    CSV columns are all read as text (empty = missing) and parsed by :func:`ingest`, so a value
    like ``0.1`` stays exact instead of going through a float.

    Raises:
        SchemaError: unsupported suffix, or a required column is missing from a CSV header.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pq.read_table(path)
    if suffix == ".csv":
        return _read_csv(path)
    raise SchemaError(
        f"cannot read {str(path)!r}: unsupported suffix {path.suffix!r}; "
        "use a .parquet, .pq or .csv file"
    )


def _read_csv(path: Path) -> pa.Table:
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    _check_required(header)
    present = [name for name in REQUIRED_COLUMNS if name in header]
    return pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.large_string() for name in present},
            include_columns=present,
            strings_can_be_null=False,
        ),
    )


# --------------------------------------------------------------------------------------------
# Ingest


def ingest_file(catalog: Catalog, namespace: str, path: Path, **kwargs: Any) -> IngestResult:
    """Read ``path`` with :func:`read_trades_file` and :func:`ingest` it (source = the path)."""
    return ingest(catalog, namespace, read_trades_file(Path(path)), source=str(path), **kwargs)


def ingest(
    catalog: Catalog,
    namespace: str,
    raw: pa.Table,
    *,
    source: str,
    now: datetime | None = None,
    min_ts: datetime = datetime(2000, 1, 1, tzinfo=UTC),
    max_future: timedelta = timedelta(minutes=5),
) -> IngestResult:
    """Validate raw trades; append good ones to ``trades`` and bad ones to ``trades_rejected``.

    Accepted input types: exchange, symbol and side as text; trade_id, price and quantity as
    integers, floats, decimals or numeric text; ts as a timestamp or ISO-8601 text
    (``YYYY-MM-DD[T ]HH:MM[:SS[.fraction]][Z|±HH[:MM]]``). Naive timestamps (no zone) are taken
    as UTC. Floats are converted through their shortest round-trip text (0.1 -> 0.10000000).
    Other columns are ignored; ``ingested_at`` is always set to ``now``.

    Rows are checked in the order of :data:`REASONS`; a failing row is appended to
    ``trades_rejected`` with its raw values as text and the first reason that applies. Rows with
    the key (exchange, symbol, trade_id) and payload (price, quantity, side, ts) of a row already
    kept, in the table or earlier in the input, are dropped as duplicates. Rows sharing a key with
    a different payload are conflicting: when one version is already stored, the others are
    rejected; when none is stored, every version is rejected, since none can be trusted.

    ``trades`` is only ever appended to (one commit, before the rejects' commit, so a crash in
    between is repaired by ingesting the same input again).

    Args:
        catalog: PyIceberg catalog holding the tables made by ``ensure_tables``.
        namespace: Namespace of ``trades`` and ``trades_rejected``.
        raw: The input rows.
        source: Where the rows came from (recorded with rejects and in the snapshot summary).
        now: Ingestion time; defaults to the current time. Naive values are taken as UTC.
        min_ts: Trades before this are rejected as ``ts_too_old``.
        max_future: Trades after ``now + max_future`` are rejected as ``ts_in_future``.

    Raises:
        SchemaError: a required column is missing, duplicated, of an unusable type, or holds a
            value that is not a number / timestamp at all. Nothing is written in that case.
    """
    now = _as_utc(now if now is not None else datetime.now(UTC))
    min_ts = _as_utc(min_ts)
    _check_required(raw.column_names)
    for name in REQUIRED_COLUMNS:
        count = len(raw.schema.get_all_field_indices(name))
        if count > 1:
            raise SchemaError(
                f"column {name!r} appears {count} times in the input; keep exactly one"
            )
    n = raw.num_rows
    # Chunked columns are used as they are: combining them first would copy every value once more.
    columns = {name: raw.column(name) for name in REQUIRED_COLUMNS}

    # Parse everything (and raise SchemaError) before anything is written.
    exchange_codes, exchanges = _encode_key_text(_text(columns["exchange"], "exchange"))
    symbol_codes, symbols = _encode_key_text(_text(columns["symbol"], "symbol"))
    trade_id = _parse_trade_id(columns["trade_id"])
    price = _parse_amount(columns["price"], "price")
    quantity = _parse_amount(columns["quantity"], "quantity")
    ts = _parse_ts(columns["ts"])
    is_buy, side_ok = _parse_side(_text(columns["side"], "side"))

    now_us = _epoch_us(now)
    checks = (
        exchange_codes < 0,
        symbol_codes < 0,
        trade_id.missing,
        trade_id.invalid,
        price.missing,
        quantity.missing,
        ts.missing,
        price.non_finite,
        quantity.non_finite,
        price.negative | price.zero,
        quantity.negative | quantity.zero,
        price.unrepresentable,
        quantity.unrepresentable,
        ~side_ok,
        ts.us > now_us + _duration_us(max_future),
        ts.us < _epoch_us(min_ts),
        ts.sub_us,
    )
    reason = np.full(n, -1, dtype=np.int8)
    for code in range(len(checks) - 1, -1, -1):
        reason[checks[code]] = code

    valid = np.flatnonzero(reason < 0)
    pair_codes = exchange_codes * max(len(symbols), 1) + symbol_codes
    batch = _Rows(
        pair=pair_codes[valid],
        trade_id=trade_id.value[valid],
        price=price.units[valid],
        quantity=quantity.units[valid],
        is_buy=is_buy[valid],
        ts=ts.us[valid],
    )
    trades = catalog.load_table((namespace, TRADES))
    stored = _stored_rows(trades, batch, exchanges, symbols)
    keep, duplicate, conflict = _classify(batch, stored)
    reason[valid[conflict]] = _CONFLICT

    accepted_idx = valid[keep]
    rejected_idx = np.flatnonzero(reason >= 0)
    duplicates = int(np.count_nonzero(duplicate))
    counts = np.bincount(reason[rejected_idx], minlength=len(REASONS))
    by_reason = {REASONS[i]: int(c) for i, c in enumerate(counts) if c}
    result_counts = (len(accepted_idx), duplicates, len(rejected_idx))
    assert n == sum(result_counts), f"row accounting broken: {n} rows in, {result_counts} out"

    summary = {
        "ohlcv.ingest.source": source,
        "ohlcv.ingest.rows-in": str(n),
        "ohlcv.ingest.duplicates": str(duplicates),
        "ohlcv.ingest.rejected": str(len(rejected_idx)),
    }
    snapshot_id: int | None = None
    if len(accepted_idx):
        accepted = _accepted_table(
            accepted_idx, exchange_codes, exchanges, symbol_codes, symbols,
            trade_id.value, price.units, quantity.units, is_buy, ts.us, now_us,
        )  # fmt: skip
        trades.append(accepted, snapshot_properties=summary)
        snapshot = trades.current_snapshot()
        assert snapshot is not None
        snapshot_id = snapshot.snapshot_id
    if len(rejected_idx):
        rejects = _rejected_table(columns, rejected_idx, reason, source, now_us)
        catalog.load_table((namespace, TRADES_REJECTED)).append(
            rejects, snapshot_properties=summary
        )

    return IngestResult(
        rows_in=n,
        accepted=len(accepted_idx),
        duplicates=duplicates,
        rejected=len(rejected_idx),
        rejected_by_reason=by_reason,
        trades_snapshot_id=snapshot_id,
    )


# --------------------------------------------------------------------------------------------
# Column checks and parsing


def _check_required(names: list[str]) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise SchemaError(
            f"input is missing required column {missing[0]!r} (missing: {', '.join(missing)}; "
            f"found: {', '.join(names) or 'no columns'}); add it or rename the column that "
            "holds it"
        )


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _epoch_us(value: datetime) -> int:
    return _duration_us(value - datetime(1970, 1, 1, tzinfo=UTC))


def _duration_us(value: timedelta) -> int:
    return (value.days * 86_400 + value.seconds) * _US_PER_S + value.microseconds


def _bools(values: _Column) -> np.ndarray:
    """Boolean numpy array from an Arrow boolean array; null counts as False."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _ints(values: _Column, fill: int = 0) -> np.ndarray:
    filled = pc.fill_null(values.cast(pa.int64()), fill)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.int64)


def _lengths(values: _Column) -> np.ndarray:
    return _ints(pc.utf8_length(values))


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _decoded(values: _Column) -> _Column:
    if pa.types.is_dictionary(values.type):
        return values.cast(values.type.value_type)
    return values


def _text(values: _Column, name: str) -> _Column:
    values = _decoded(values)
    if pa.types.is_null(values.type) or _is_text(values.type):
        return values.cast(pa.large_string())
    raise SchemaError(
        f"column {name!r} has type {values.type}, expected text; write {name} as a string column"
    )


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


def _encode_key_text(values: _Column) -> tuple[np.ndarray, pa.Array]:
    """Codes into the stripped distinct values (-1 = null or blank), and those values.

    Strings repeat a lot (few exchanges and symbols), so strip the dictionary, not every row.
    """
    indices, dictionary = _dictionary_codes(values)
    stripped = pc.dictionary_encode(pc.utf8_trim_whitespace(dictionary))
    uniques = stripped.dictionary
    remap = _ints(stripped.indices).copy()  # zero-copy views are read-only
    remap[_bools(pc.equal(pc.utf8_length(uniques), 0))[remap]] = -1
    remap = np.append(remap, -1)  # index -1 (a null) picks this
    return remap[indices], uniques


def _parse_side(values: _Column) -> tuple[np.ndarray, np.ndarray]:
    """(is_buy, is_valid) after stripping and lower-casing."""
    indices, dictionary = _dictionary_codes(values)
    normal = pc.utf8_lower(pc.utf8_trim_whitespace(dictionary))
    buy = np.append(_bools(pc.equal(normal, "buy")), False)  # index -1 (a null) picks False
    sell = np.append(_bools(pc.equal(normal, "sell")), False)
    return buy[indices], buy[indices] | sell[indices]


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


def _decimal128_units(values: _Column, scale: int) -> _Amount | None:
    """Read decimal128 words directly; None when some value needs more than 64 bits."""
    n = len(values)
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
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
    else:
        missing = np.zeros(n, dtype=bool)
    if not np.array_equal(high, low >> 63):
        return None
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
        # Arrow keeps instants as UTC whatever the zone; a naive timestamp is taken as UTC.
        missing = _bools(pc.is_null(values))
        raw = _ints(values.cast(pa.int64()))
        if t.unit == "ns":
            return _Timestamps(raw // 1000, missing, (raw % 1000 != 0) & ~missing)
        per_unit = {"s": _US_PER_S, "ms": 1000, "us": 1}[t.unit]
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


# --------------------------------------------------------------------------------------------
# Duplicates and conflicts


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


# --------------------------------------------------------------------------------------------
# Output tables


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
    # Casting int64 to decimal128(19, 0) lays the integers out as 128-bit words (fast, in C++);
    # viewing those words with the wanted scale divides by 10**scale without touching them.
    integers = pa.array(units, type=pa.int64(), mask=nulls).cast(pa.decimal128(19, 0))
    return integers.view(pa.decimal128(precision, scale))


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(us, type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _accepted_table(
    idx: np.ndarray,
    exchange_codes: np.ndarray,
    exchanges: pa.Array,
    symbol_codes: np.ndarray,
    symbols: pa.Array,
    trade_id: np.ndarray,
    price: np.ndarray,
    quantity: np.ndarray,
    is_buy: np.ndarray,
    ts: np.ndarray,
    now_us: int,
) -> pa.Table:
    # The table's sort order is (symbol, ts): files written in that order have tight statistics.
    # Rows arrive roughly in ts order already: a stable sort by symbol alone (a radix sort on
    # small integers) gets most of the benefit at a fraction of the cost of a full sort.
    rank = np.empty(len(symbols), dtype=np.int64)
    rank[_ints(pc.sort_indices(symbols))] = np.arange(len(symbols))
    small = np.int16 if len(symbols) < 2**15 else np.int64
    idx = idx[np.argsort(rank[symbol_codes[idx]].astype(small), kind="stable")]
    sides = pa.DictionaryArray.from_arrays(
        pa.array(is_buy[idx].astype(np.int8)),
        pa.array(["sell", "buy"], pa.large_string()),
    ).cast(pa.large_string())
    columns = [
        exchanges.take(pa.array(exchange_codes[idx])),
        symbols.take(pa.array(symbol_codes[idx])),
        pa.array(trade_id[idx], type=pa.int64()),
        decimal_from_units(price[idx]),
        decimal_from_units(quantity[idx]),
        sides,
        _timestamps(ts[idx]),
        _timestamps(np.full(len(idx), now_us, dtype=np.int64)),
    ]
    return pa.Table.from_arrays(columns, schema=trades_arrow_schema())


def _rejected_table(
    columns: dict[str, pa.ChunkedArray],
    idx: np.ndarray,
    reason: np.ndarray,
    source: str,
    now_us: int,
) -> pa.Table:
    take = pa.array(idx)
    text = [_as_text(columns[name].take(take)) for name in REQUIRED_COLUMNS]
    reasons = pa.DictionaryArray.from_arrays(
        pa.array(reason[idx]), pa.array(REASONS, pa.large_string())
    ).cast(pa.large_string())
    n = len(idx)
    return pa.Table.from_arrays(
        [
            *text,
            reasons,
            pa.repeat(pa.scalar(source, pa.large_string()), n),
            _timestamps(np.full(n, now_us, dtype=np.int64)),
        ],
        schema=rejected_arrow_schema(),
    )


def _as_text(values: _Column) -> _Column:
    values = _decoded(values)
    if pa.types.is_timestamp(values.type) and values.type.tz is None:
        # Arrow prints naive timestamps without a zone; say that they were taken as UTC.
        values = values.cast(pa.timestamp(values.type.unit, tz="UTC"))
    return values.cast(pa.large_string())
