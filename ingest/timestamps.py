"""Parsing of the ``ts`` column into microseconds since the epoch (UTC).

Timestamps of any unit are taken as UTC instants (a naive one is UTC, as core.time allows for
input data); text is ISO-8601, with or without an offset (none: UTC). Text that is not a
timestamp at all raises :class:`~ingest.reading.SchemaError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.columns import (
    Column,
    bools,
    decoded,
    digits_to_ints,
    first_true,
    ints,
    is_text,
    text_scalar,
)
from ingest.reading import SchemaError

_US_PER_S = 1_000_000
_TS_RE = (
    r"^(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ](?P<hm>[0-9]{2}:[0-9]{2})"
    r"(?::(?P<sec>[0-9]{2}))?(?:[.,](?P<frac>[0-9]+))?[ ]*"
    r"(?P<zone>[Zz]|(?P<zsign>[+-])(?P<zh>[0-9]{2})(?::?(?P<zm>[0-9]{2}))?)?$"
)
_TS_EXAMPLE = "2024-05-01T12:34:56.789012Z"


@dataclass
class Timestamps:
    us: np.ndarray
    missing: np.ndarray
    sub_us: np.ndarray


def parse_ts(values: Column) -> Timestamps:
    values = decoded(values)
    t = values.type
    if pa.types.is_null(t):
        n = len(values)
        return Timestamps(np.zeros(n, np.int64), np.ones(n, bool), np.zeros(n, bool))
    if pa.types.is_timestamp(t):
        # Arrow keeps instants as UTC whatever the zone; a naive timestamp is taken as UTC, as
        # core.time allows for input data (the edge), so its raw values already are UTC.
        missing = bools(pc.is_null(values))
        raw = ints(values.cast(pa.int64()))
        if t.unit == "ns":
            return Timestamps(raw // 1000, missing, (raw % 1000 != 0) & ~missing)
        per_unit = {"s": _US_PER_S, "ms": 1000, "us": 1}[t.unit]
        if per_unit == 1:
            return Timestamps(raw, missing, np.zeros_like(missing))
        # Clamped values are centuries out of range and get rejected as too old / in the future.
        limit = np.iinfo(np.int64).max // per_unit
        return Timestamps(np.clip(raw, -limit, limit) * per_unit, missing, np.zeros_like(missing))
    if is_text(t):
        return _parse_ts_text(values.cast(pa.large_string()))
    raise SchemaError(
        f"column 'ts' has type {t}: expected a timestamp or ISO-8601 text such as "
        f"{_TS_EXAMPLE!r}; convert it (epoch numbers: to a timestamp type) before ingesting"
    )


def _parse_ts_text(values: Column) -> Timestamps:
    text = pc.utf8_trim_whitespace(values)
    missing = ints(pc.utf8_length(text), fill=0) == 0
    parts = pc.extract_regex(text, _TS_RE)
    bad = ~missing & bools(pc.is_null(parts))
    if bad.any():
        raise _not_a_timestamp(values, bad)
    seconds = pc.struct_field(parts, "sec")
    seconds = pc.if_else(pc.equal(seconds, ""), text_scalar("00"), seconds)
    t, colon, nothing = text_scalar("T"), text_scalar(":"), text_scalar("")
    wall_text = pc.binary_join_element_wise(
        pc.struct_field(parts, "date"), t, pc.struct_field(parts, "hm"), colon, seconds, nothing
    )
    # Missing values get a harmless placeholder so the cast only fails on real garbage.
    wall_text = pc.if_else(pa.array(missing), text_scalar("2000-01-01T00:00:00"), wall_text)
    wall = _cast_or_locate(wall_text, pa.timestamp("s"), lambda bad: _not_a_timestamp(values, bad))
    frac = pc.struct_field(parts, "frac")
    micros = digits_to_ints(pc.utf8_slice_codeunits(pc.utf8_rpad(frac, 6, "0"), 0, 6))
    beyond = pc.utf8_rtrim(pc.utf8_slice_codeunits(frac, 6), characters="0")
    zone_minutes = digits_to_ints(pc.struct_field(parts, "zh")) * 60 + digits_to_ints(
        pc.struct_field(parts, "zm")
    )
    zone_minutes = (
        np.where(bools(pc.equal(pc.struct_field(parts, "zsign"), "-")), -1, 1) * zone_minutes
    )
    us = (ints(wall.cast(pa.int64())) - zone_minutes * 60) * _US_PER_S + micros
    sub_us = (ints(pc.utf8_length(beyond)) > 0) & ~missing
    return Timestamps(np.where(missing, 0, us), missing, sub_us)


def _not_a_timestamp(values: Column, bad: np.ndarray) -> SchemaError:
    row = first_true(bad)
    return SchemaError(
        f"column 'ts' is not a timestamp: row {row + 1} (1-based, header not counted) holds "
        f"{values[row].as_py()!r}; write ISO-8601 such as {_TS_EXAMPLE!r} (no zone = UTC)"
    )


def _cast_or_locate(
    values: Column, target: pa.DataType, error: Callable[[np.ndarray], SchemaError]
) -> Column:
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
