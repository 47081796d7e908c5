"""The integer-limb sums of volume and quote volume against the decimal sums and the oracle.

The candle step sums volume and quote volume as 64-bit integer limbs by default and on
decimals when it cannot prove the limbs exact; both must give the oracle's numbers, including
for windows whose 64-bit unscaled sums would overflow.
"""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.timeframes import TIMEFRAMES
from spark_jobs.candles import (
    INTEGER_SUMS_MAX_TRADES,
    _integer_sums_allowed,
    candles,
)
from tests.support.oracle import Trade, candle_rows, diff, expected_candles
from tests.support.trades import ALL, EXCHANGE, START, id_range, random_trades, to_arrow

INT64_MAX = 2**63 - 1
ONE_MINUTE = TIMEFRAMES["1m"]
UNIT = Decimal("1e-8")


def _frame(
    spark: SparkSession, trades: list[Trade], amount_type: str = "decimal(18,8)"
) -> DataFrame:
    # Through pandas, decimals arrive as DECIMAL(38, 18); the trades table holds DECIMAL(18, 8).
    df = spark.createDataFrame(to_arrow(trades).to_pandas())
    return df.withColumns(
        {"price": F.col("price").cast(amount_type), "quantity": F.col("quantity").cast(amount_type)}
    )


def _same(a: DataFrame, b: DataFrame) -> bool:
    return a.exceptAll(b).count() == 0 and b.exceptAll(a).count() == 0


def _huge_trades(rng: random.Random) -> list[Trade]:
    """Three 1m windows whose unscaled 64-bit sums overflow: volume units, product units, both."""
    largest = Decimal("9999999999.99999999")  # the largest DECIMAL(18, 8)
    minute = START + timedelta(minutes=7)
    shapes = [
        # (symbol, price, quantity, trades): quantities near the largest value
        (
            "BTC-USD",
            lambda: Decimal("1.23456789") + rng.randrange(10**6) * UNIT,
            lambda: largest - rng.randrange(10**8) * UNIT,
            25,
        ),
        # prices near the largest value: every price * quantity has ~10^25 units
        (
            "ETH-USD",
            lambda: largest - rng.randrange(10**9) * UNIT,
            lambda: Decimal("0.5") + rng.randrange(10**7) * UNIT,
            40,
        ),
        # both large
        (
            "SOL-USD",
            lambda: Decimal(10**9) + rng.randrange(10**12) * UNIT,
            lambda: Decimal(10**3) + rng.randrange(10**10) * UNIT,
            60,
        ),
    ]
    trades = []
    next_id = 5_000
    for symbol, price, quantity, n in shapes:
        for _ in range(n):
            ts = minute + timedelta(microseconds=rng.randrange(60_000_000))
            trades.append(Trade(EXCHANGE, symbol, next_id, price(), quantity(), "buy", ts))
            next_id += 1
    return trades


def test_integer_sums_equal_decimal_sums_and_the_oracle(spark: SparkSession) -> None:
    rng = random.Random(31)
    trades = random_trades(rng, START, START + timedelta(hours=3), 800, first_id=10)
    df = _frame(spark, trades)
    ids = id_range(trades)
    for tf in ALL:
        integer = candles(df, tf, ids)  # the default: integer limbs
        decimal = candles(df, tf, ids, max_trades=INTEGER_SUMS_MAX_TRADES)  # the fallback
        assert integer.schema == decimal.schema
        assert not diff(expected_candles(trades, tf), candle_rows(integer))
        assert not diff(expected_candles(trades, tf), candle_rows(decimal))
    assert _same(
        candles(df, ONE_MINUTE, ids),
        candles(df, ONE_MINUTE, ids, max_trades=INTEGER_SUMS_MAX_TRADES),
    )


def test_sums_whose_64_bit_units_overflow_stay_exact(spark: SparkSession) -> None:
    rng = random.Random(37)
    trades = _huge_trades(rng)
    # Given: windows where a plain sum of unscaled 64-bit units would wrap
    volume_units = sum(int(t.quantity / UNIT) for t in trades if t.symbol == "BTC-USD")
    assert volume_units > INT64_MAX
    for symbol in ("ETH-USD", "SOL-USD"):
        assert all(
            int(t.price / UNIT) * int(t.quantity / UNIT) > INT64_MAX
            for t in trades
            if t.symbol == symbol
        )
    # ... mixed with ordinary trades
    trades += random_trades(rng, START, START + timedelta(minutes=30), 300, first_id=90_000)
    df = _frame(spark, trades)
    for tf in (ONE_MINUTE, TIMEFRAMES["1d"]):
        # When: the candles are computed on integer limbs, and on decimals
        integer = candles(df, tf, max_trades=len(trades))
        decimal = candles(df, tf, max_trades=INTEGER_SUMS_MAX_TRADES)
        # Then: both equal the oracle to the last digit
        expected = expected_candles(trades, tf)
        assert not diff(expected, candle_rows(integer))
        assert not diff(expected, candle_rows(decimal))


def test_amounts_of_other_decimal_types(spark: SparkSession) -> None:
    rng = random.Random(41)
    trades = random_trades(rng, START, START + timedelta(hours=1), 300, first_id=1)
    tf = TIMEFRAMES["5m"]
    expected = expected_candles(trades, tf)
    # DECIMAL(20, 10) might hold digits DECIMAL(18, 8) cannot: summed on decimals;
    # DECIMAL(15, 8) always casts exactly: summed on integer limbs.
    for amount_type, integer in (("decimal(20,10)", False), ("decimal(15,8)", True)):
        df = _frame(spark, trades, amount_type)
        assert _integer_sums_allowed(df, None) is integer
        result = candles(df, tf)
        assert not diff(expected, candle_rows(result))
