"""The five candle timeframes: everything a timeframe is, in one table.

The jobs read the width, lookback and partition; the suites read the rollup source; the flows
read the flow name and schedule. Nothing about a timeframe is defined anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Timeframe:
    """A candle width. Windows are aligned to each instrument's calendar (UTC by default, so
    daily candles start at 00:00 UTC; see :mod:`core.calendars`)."""

    name: str
    width: timedelta
    lookback: timedelta
    """How far back a scheduled run recomputes, besides the windows late trades touched."""
    partition: str
    """Iceberg transform of window_start: small enough that a run rewrites few files."""
    rollup_source: str | None
    """The smaller timeframe whose published candles must roll up into these (None for 1m)."""
    flow_name: str
    cron: str
    """Schedule in UTC; staggered so no two timeframes start in the same minute."""

    @property
    def width_us(self) -> int:
        return int(self.width / timedelta(microseconds=1))

    @property
    def table(self) -> str:
        return f"ohlcv_{self.name}"

    def __str__(self) -> str:
        return self.name


def _minutes(n: int) -> timedelta:
    return timedelta(minutes=n)


TIMEFRAMES: dict[str, Timeframe] = {
    tf.name: tf
    for tf in (
        Timeframe(
            name="1m",
            width=_minutes(1),
            lookback=_minutes(10),
            partition="hour",
            rollup_source=None,
            flow_name="OHLCV 1-Minute Pipeline",
            cron="1-59/5 * * * *",
        ),
        Timeframe(
            name="5m",
            width=_minutes(5),
            lookback=_minutes(20),
            partition="day",
            rollup_source="1m",
            flow_name="OHLCV 5-Minute Pipeline",
            cron="3-59/15 * * * *",
        ),
        Timeframe(
            name="30m",
            width=_minutes(30),
            lookback=_minutes(60),
            partition="day",
            rollup_source="5m",
            flow_name="OHLCV 30-Minute Pipeline",
            cron="8,38 * * * *",
        ),
        Timeframe(
            name="1h",
            width=_minutes(60),
            lookback=_minutes(120),
            partition="month",
            rollup_source="30m",
            flow_name="OHLCV 1-Hour Pipeline",
            cron="24 * * * *",
        ),
        Timeframe(
            name="1d",
            width=timedelta(days=1),
            lookback=timedelta(days=2),
            partition="year",
            # 30m, not 1h: a session opening on a half hour (NYSE 09:30) splits an hour.
            rollup_source="30m",
            flow_name="OHLCV 1-Day Pipeline",
            cron="42 0 * * *",
        ),
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


def rollup_source(tf: Timeframe) -> Timeframe | None:
    """The smaller timeframe whose published candles roll up into ``tf`` (None for 1m)."""
    return TIMEFRAMES[tf.rollup_source] if tf.rollup_source else None
