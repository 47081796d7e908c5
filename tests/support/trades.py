"""Shared test data: random trades with the hard cases, their ingestion, oracle checks."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables
from core.timeframes import TIMEFRAMES, Timeframe
from ingest import ingest
from spark_jobs.candles import TradeIdRange
from tests.support.oracle import Trade, diff, expected_candles, stored_candles

EXCHANGE = "test"
SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")
# Starts two hours before midnight so every timeframe, 1d included, spans several windows.
START = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
ALL = list(TIMEFRAMES.values())


def random_trades(
    rng: random.Random, start: datetime, end: datetime, count: int, first_id: int
) -> list[Trade]:
    """Trades with ties on ts, trades exactly on window boundaries and shuffled trade ids."""
    span_us = (end - start) // timedelta(microseconds=1)
    ids = list(range(first_id, first_id + count))
    rng.shuffle(ids)  # ids disagree with time order: the tie-break must use them, not row order
    trades: list[Trade] = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.15 and trades:
            ts = rng.choice(trades).ts  # a tie on ts with an earlier trade
        elif roll < 0.25:
            # exactly on a minute boundary (some are also 5m/30m/1h/1d boundaries)
            ts = start + timedelta(minutes=rng.randrange(span_us // 60_000_000))
        else:
            ts = start + timedelta(microseconds=rng.randrange(span_us))
        price = Decimal(rng.randrange(1, 10**12)) / Decimal(10**8) + Decimal(
            rng.choice([1, 100, 60000])
        )
        quantity = Decimal(rng.randrange(1, 10**10)) / Decimal(10**8)
        trades.append(
            Trade(
                EXCHANGE,
                rng.choice(SYMBOLS),
                ids[i],
                price,
                quantity,
                rng.choice(["buy", "sell"]),
                ts,
            )
        )
    return trades


def id_range(trades: list[Trade]) -> TradeIdRange:
    """The trade_id range of trades whose ids are all numbers (what the packed key needs)."""
    ids = [t.trade_id for t in trades]
    numbers = [i for i in ids if isinstance(i, int)]
    assert numbers and len(numbers) == len(ids), "a range of numeric ids needs numeric ids only"
    return TradeIdRange(min(numbers), max(numbers))


def to_arrow(trades: list[Trade]) -> pa.Table:
    """The trades as an input table; trade_id as int64, or as text when some id is text."""
    text = any(isinstance(t.trade_id, str) for t in trades)
    return pa.table(
        {
            "exchange": [t.exchange for t in trades],
            "symbol": [t.symbol for t in trades],
            "trade_id": (
                pa.array([str(t.trade_id) for t in trades], pa.large_string())
                if text
                else pa.array([t.trade_id for t in trades], pa.int64())
            ),
            "price": pa.array([t.price for t in trades], pa.decimal128(18, 8)),
            "quantity": pa.array([t.quantity for t in trades], pa.decimal128(18, 8)),
            "side": [t.side for t in trades],
            "ts": pa.array([t.ts for t in trades], pa.timestamp("us", tz="UTC")),
        }
    )


def bad_rows(first_id: int) -> pa.Table:
    """Rows ingestion must reject; none may reach a candle."""
    ts = START + timedelta(minutes=3)
    return pa.table(
        {
            "exchange": [EXCHANGE, EXCHANGE, EXCHANGE, EXCHANGE],
            "symbol": [None, "BTC-USD", "BTC-USD", "ETH-USD"],
            "trade_id": pa.array(range(first_id, first_id + 4), pa.int64()),
            "price": pa.array(
                [Decimal(1), Decimal(-5), Decimal(7), Decimal(9)], pa.decimal128(18, 8)
            ),
            "quantity": pa.array(
                [Decimal(1), Decimal(1), Decimal(0), Decimal(1)], pa.decimal128(18, 8)
            ),
            "side": ["buy", "buy", "sell", "sell"],
            "ts": pa.array([ts, ts, ts, ts + timedelta(days=3650)], pa.timestamp("us", tz="UTC")),
        }
    )


def deliver(
    catalog: Catalog, tables: Tables, trades: list[Trade], *extra: pa.Table, now: datetime
) -> None:
    raw = pa.concat_tables([to_arrow(trades), *extra])
    result = ingest(catalog, tables.namespace, raw, source="test", now=now)
    assert result.rows_in == result.accepted + result.duplicates + result.rejected


def assert_matches_oracle(
    spark: SparkSession, tables: Tables, trades: list[Trade], tfs: list[Timeframe]
) -> None:
    for tf in tfs:
        problems = diff(expected_candles(trades, tf), stored_candles(spark, tables.candles(tf)))
        assert not problems, f"{tf}: {len(problems)} differences, first: {problems[:5]}"
