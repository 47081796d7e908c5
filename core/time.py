"""The one rule for time: every instant in the code is an aware datetime, kept in UTC.

- Code refuses a naive datetime (:func:`utc` raises, naming the value): a naive value has lost
  the information of which instant it means, and guessing is how candles shift by hours.
- Only values that arrive as text without an offset are read as UTC, at the edge where they
  are parsed: CLI arguments (:func:`parse_instant`), flow parameters typed into Prefect
  (:func:`assume_utc`) and timestamp columns of an input file (ingestion).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused with what to pass instead."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{value.isoformat()} has no time zone: pass an aware datetime "
            "(e.g. datetime(..., tzinfo=UTC))"
        )
    return value.astimezone(UTC)


def assume_utc(value: datetime) -> datetime:
    """Edge rule for values parsed from text: no offset means UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_instant(text: str) -> datetime:
    """ISO-8601 text as an aware UTC datetime; text without an offset is UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text!r} is not ISO-8601: use e.g. 2026-11-26T14:05:00Z") from None
    return assume_utc(value)


def to_us(value: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (utc(value) - EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    """The aware UTC datetime ``us`` microseconds after the epoch."""
    return EPOCH + timedelta(microseconds=us)


def duration_us(value: timedelta) -> int:
    """A duration in whole microseconds (exact, no float)."""
    return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
