"""An independent oracle: candles in plain Python with exact Decimals, no Spark involved."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.timeframes import Timeframe

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WIDE = Context(prec=100)


@dataclass(frozen=True)
class Trade:
    exchange: str
    symbol: str
    trade_id: int
    price: Decimal
    quantity: Decimal
    side: str
    ts: datetime

    @property
    def ts_us(self) -> int:
        return (self.ts - EPOCH) // timedelta(microseconds=1)


Key = tuple[str, str, int]


def expected_candles(trades: Iterable[Trade], tf: Timeframe) -> dict[Key, dict[str, Any]]:
    """Candles keyed by (exchange, symbol, window_start in epoch microseconds)."""
    groups: dict[Key, list[Trade]] = {}
    for t in trades:
        start = t.ts_us - t.ts_us % tf.width_us
        groups.setdefault((t.exchange, t.symbol, start), []).append(t)
    out = {}
    for key, group in groups.items():
        ordered = sorted(group, key=lambda t: (t.ts_us, t.trade_id))
        with localcontext(_WIDE):  # exact: 100 digits never round these sums
            volume = sum((t.quantity for t in group), Decimal(0))
            quote = sum((t.price * t.quantity for t in group), Decimal(0))
            vwap = (quote / volume).quantize(Decimal("1e-8"), rounding=ROUND_HALF_UP)
        out[key] = {
            "window_end": key[2] + tf.width_us,
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
    return out


def stored_candles(spark: SparkSession, table: str) -> dict[Key, dict[str, Any]]:
    """A candle table read back in the oracle's shape."""
    return candle_rows(spark.read.table(table))


def candle_rows(candles: DataFrame) -> dict[Key, dict[str, Any]]:
    """Candles collected in the oracle's shape (timestamps as epoch microseconds)."""
    rows = candles.select(
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
