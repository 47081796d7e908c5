"""The five candle timeframes and their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum


class Mode(StrEnum):
    """How a timeframe is normally refreshed (both go through the same replace-only write)."""

    INCREMENTAL = "incremental"
    BATCH = "batch"


@dataclass(frozen=True)
class Timeframe:
    """A candle width, aligned to the UTC epoch (so daily candles start at 00:00 UTC)."""

    name: str
    width: timedelta
    lookback: timedelta
    mode: Mode
    partition: str
    """Iceberg transform of window_start: small enough that a run rewrites few files."""

    @property
    def width_us(self) -> int:
        return int(self.width / timedelta(microseconds=1))

    @property
    def table(self) -> str:
        return f"ohlcv_{self.name}"

    def __str__(self) -> str:
        return self.name


TIMEFRAMES: dict[str, Timeframe] = {
    tf.name: tf
    for tf in (
        Timeframe("1m", timedelta(minutes=1), timedelta(minutes=10), Mode.INCREMENTAL, "hour"),
        Timeframe("5m", timedelta(minutes=5), timedelta(minutes=20), Mode.INCREMENTAL, "day"),
        Timeframe("30m", timedelta(minutes=30), timedelta(minutes=60), Mode.BATCH, "day"),
        Timeframe("1h", timedelta(hours=1), timedelta(hours=2), Mode.BATCH, "month"),
        Timeframe("1d", timedelta(days=1), timedelta(days=2), Mode.BATCH, "year"),
    )
}


def timeframe(name: str | Timeframe) -> Timeframe:
    """Look a timeframe up by name, with an error that lists the valid ones."""
    if isinstance(name, Timeframe):
        return name
    try:
        return TIMEFRAMES[name]
    except KeyError:
        raise ValueError(
            f"unknown timeframe {name!r}: use one of {', '.join(TIMEFRAMES)}"
        ) from None
