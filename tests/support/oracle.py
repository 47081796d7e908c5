"""An independent oracle: candles in plain Python with exact Decimals, no Spark involved."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.timeframes import Timeframe

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WIDE = Context(prec=100)


@dataclass(frozen=True)
class Trade:
    exchange: str
    symbol: str
    trade_id: int | str
    """A number, or text (an exchange's id that is not a number: a UUID, ``ETH-123456``)."""
    price: Decimal
    quantity: Decimal
    side: str
    ts: datetime

    @property
    def ts_us(self) -> int:
        return (self.ts - EPOCH) // timedelta(microseconds=1)

    @property
    def order(self) -> tuple[int, bool, int | str]:
        """The documented tie order: by ts, then numeric ids (as numbers) before text ids (by
        code point, which is UTF-8 byte order)."""
        return (self.ts_us, isinstance(self.trade_id, str), self.trade_id)


Key = tuple[str, str, int]


def expected_candles(trades: Iterable[Trade], tf: Timeframe) -> dict[Key, dict[str, Any]]:
    """Candles keyed by (exchange, symbol, window_start in epoch microseconds)."""
    groups: dict[Key, list[Trade]] = {}
    for t in trades:
        start = t.ts_us - t.ts_us % tf.width_us
        groups.setdefault((t.exchange, t.symbol, start), []).append(t)
    out = {}
    for key, group in groups.items():
        out[key] = {"window_end": key[2] + tf.width_us, **_candle(group)}
    return out


def _candle(group: list[Trade]) -> dict[str, Any]:
    ordered = sorted(group, key=lambda t: t.order)
    with localcontext(_WIDE):  # exact: 100 digits never round these sums
        volume = sum((t.quantity for t in group), Decimal(0))
        quote = sum((t.price * t.quantity for t in group), Decimal(0))
        vwap = (quote / volume).quantize(Decimal("1e-8"), rounding=ROUND_HALF_UP)
    return {
        "open": ordered[0].price,
        "high": max(t.price for t in group),
        "low": min(t.price for t in group),
        "close": ordered[-1].price,
        "volume": volume,
        "quote_volume": quote,
        "trade_count": len(group),
        "vwap": vwap,
        "open_ts": ordered[0].ts_us,
        "close_ts": ordered[-1].ts_us,
    }


@dataclass(frozen=True)
class LocalTime:
    """The oracle's own description of an instrument's local time (not core.calendars)."""

    zone: str = "UTC"
    session: tuple[time, time] | None = None
    weekdays: frozenset[int] = frozenset(range(5))


def local_window(ts: datetime, width: timedelta, local: LocalTime) -> tuple[int, int, date] | None:
    """(start us, end us, local date) of the window holding ``ts``, from wall-clock rules.

    Shorter than a day: floor the local wall-clock time to the width and turn that wall time
    back into an instant (on the same side of a repeated hour as ``ts``). A day: local
    midnight to local midnight, or the session on a session weekday. zoneinfo does the
    conversions; nothing here is shared with the code under test.
    """
    tz = ZoneInfo(local.zone)
    wall = ts.astimezone(tz)
    if width < timedelta(days=1):
        into = (
            timedelta(
                hours=wall.hour,
                minutes=wall.minute,
                seconds=wall.second,
                microseconds=wall.microsecond,
            )
            % width
        )
        floor = (wall.replace(tzinfo=None) - into).replace(tzinfo=tz, fold=wall.fold)
        start = floor.astimezone(UTC)
        return _us(start), _us(start + width), floor.date()
    day = wall.date()
    if local.session is None:
        opens, closes = time(0), time(0)
        next_day = day + timedelta(days=1)
    else:
        opens, closes = local.session
        next_day = day
        if (
            day.weekday() not in local.weekdays
            or not opens <= wall.time().replace(tzinfo=None) < closes
        ):
            return None
    start = datetime.combine(day, opens, tzinfo=tz).astimezone(UTC)
    end = datetime.combine(next_day, closes, tzinfo=tz).astimezone(UTC)
    return _us(start), _us(end), day


def _us(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


def expected_local_candles(
    trades: Iterable[Trade], width: timedelta, local_of: Callable[[str, str], LocalTime]
) -> dict[Key, dict[str, Any]]:
    """Candles of ``trades`` in each instrument's local windows, keyed like
    :func:`expected_candles`, with ``window_end``, ``trading_date`` and ``synthetic`` too."""
    groups: dict[Key, list[Trade]] = {}
    meta: dict[Key, tuple[int, date]] = {}
    for t in trades:
        found = local_window(t.ts, width, local_of(t.exchange, t.symbol))
        if found is None:
            continue
        key = (t.exchange, t.symbol, found[0])
        groups.setdefault(key, []).append(t)
        meta[key] = (found[1], found[2])
    out = {}
    for key, group in groups.items():
        candle = _candle(group)
        candle.update(window_end=meta[key][0], trading_date=meta[key][1], synthetic=False)
        out[key] = candle
    return out


def with_previous_close(
    candles: Mapping[Key, Mapping[str, Any]],
    width: timedelta,
    local_of: Callable[[str, str], LocalTime],
) -> dict[Key, dict[str, Any]]:
    """Gap policy previous_close over the whole history: every window without trades between
    a symbol's first and last candle gets a flat candle at the close before it."""
    width_us = width // timedelta(microseconds=1)
    out = {k: dict(v) for k, v in candles.items()}
    by_symbol: dict[tuple[str, str], list[int]] = {}
    for exchange, symbol, start in candles:
        by_symbol.setdefault((exchange, symbol), []).append(start)
    for (exchange, symbol), starts in by_symbol.items():
        starts.sort()
        close = None
        for start in range(starts[0], starts[-1] + 1, width_us):
            key = (exchange, symbol, start)
            if key in candles:
                close = candles[key]["close"]
                continue
            at = EPOCH + timedelta(microseconds=start)
            window = local_window(at, width, local_of(exchange, symbol))
            assert window is not None and window[0] == start, f"{key} is not on the grid"
            out[key] = {
                "window_end": start + width_us,
                "open": close,
                "high": close,
                "low": close,
                "close": close,
                "volume": Decimal(0),
                "quote_volume": Decimal(0),
                "trade_count": 0,
                "vwap": close,
                "open_ts": None,
                "close_ts": None,
                "trading_date": window[2],
                "synthetic": True,
            }
    return out


def stored_candles(spark: SparkSession, table: str) -> dict[Key, dict[str, Any]]:
    """A candle table read back in the oracle's shape."""
    return candle_rows(spark.read.table(table))


def candle_rows(candles: DataFrame) -> dict[Key, dict[str, Any]]:
    """Candles collected in the oracle's shape (timestamps as epoch microseconds)."""
    extra = [c for c in ("trading_date", "synthetic") if c in candles.columns]
    rows = candles.select(
        *extra,
        "exchange",
        "symbol",
        F.unix_micros("window_start").alias("window_start"),
        F.unix_micros("window_end").alias("window_end"),
        "open",
        "high",
        "low",
        "close",
        "volume",
        "quote_volume",
        "trade_count",
        "vwap",
        F.unix_micros("open_ts").alias("open_ts"),
        F.unix_micros("close_ts").alias("close_ts"),
    ).collect()
    out: dict[Key, dict[str, Any]] = {}
    for row in rows:
        values = row.asDict()
        key = (values.pop("exchange"), values.pop("symbol"), values.pop("window_start"))
        assert key not in out, f"duplicate candle {key}"
        out[key] = values
    return out


def diff(
    expected: Mapping[Key, Mapping[str, Any]], actual: Mapping[Key, Mapping[str, Any]]
) -> list[str]:
    """Human-readable differences (empty when equal); Decimals compare by value and scale-free."""
    problems = [f"missing candle {k}" for k in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected candle {k}" for k in sorted(actual.keys() - expected.keys())]
    for key in sorted(expected.keys() & actual.keys()):
        for column, want in expected[key].items():
            got = actual[key][column]
            if got != want:
                problems.append(f"{key} {column}: expected {want}, got {got}")
    return problems
