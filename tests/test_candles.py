"""Candles against the independent oracle, on a real Spark Connect server and Iceberg tables."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession

from spark_jobs import jobs
from spark_jobs.candles import TradeIdRange, candles
from spark_jobs.ingest import ingest
from spark_jobs.tables import Tables
from spark_jobs.timeframes import TIMEFRAMES, Timeframe
from tests.oracle import EPOCH, Trade, candle_rows, diff, expected_candles, stored_candles

pytestmark = pytest.mark.spark

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


def to_arrow(trades: list[Trade]) -> pa.Table:
    return pa.table(
        {
            "exchange": [t.exchange for t in trades],
            "symbol": [t.symbol for t in trades],
            "trade_id": pa.array([t.trade_id for t in trades], pa.int64()),
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


def test_every_timeframe_equals_oracle_through_late_trades_and_reruns(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(20260301)
    # Given: three hours of trades, delivered with duplicates and bad rows
    t1 = START + timedelta(hours=3)
    first = random_trades(rng, START, t1, 1500, first_id=1_000)
    deliver(catalog, tables, first, to_arrow(first[:40]), bad_rows(900_000), now=t1)
    # When: every timeframe runs once
    for tf in ALL:
        jobs.refresh_candles(spark, tables, tf, now=t1)
    # Then: every table equals the oracle over the accepted trades
    assert_matches_oracle(spark, tables, first, ALL)

    # Given: trades inside the lookback, late trades far beyond every short lookback
    # (2.5 to 3 hours old), and re-deliveries of old trades
    t2 = t1 + timedelta(minutes=6)
    recent = random_trades(rng, t1 - timedelta(minutes=5), t2, 300, first_id=10_000)
    late = random_trades(rng, START, START + timedelta(minutes=30), 200, first_id=20_000)
    deliver(catalog, tables, recent + late, to_arrow(first[100:130]), now=t2)
    # When: every timeframe runs again
    results = {tf.name: jobs.refresh_candles(spark, tables, tf, now=t2) for tf in ALL}
    # Then: the late trades were picked up and every table still equals the oracle
    lookback_start = jobs.lookback_range(TIMEFRAMES["1m"], t2).start
    assert results["1m"].late_trades == sum(t.ts < lookback_start for t in recent + late) > 200
    assert results["1m"].updated > 0 and results["1m"].inserted > 0
    everything = first + recent + late
    assert_matches_oracle(spark, tables, everything, ALL)

    # When: the same runs repeat with no new trades
    before = {tf.name: jobs.main_snapshot_id(spark, tables.candles(tf)) for tf in ALL}
    reruns = {tf.name: jobs.refresh_candles(spark, tables, tf, now=t2) for tf in ALL}
    # Then: nothing is written (no snapshot) and the content is identical
    for tf in ALL:
        assert not reruns[tf.name].written
        assert reruns[tf.name].unchanged > 0
        assert jobs.main_snapshot_id(spark, tables.candles(tf)) == before[tf.name]
    assert_matches_oracle(spark, tables, everything, ALL)


def test_watermark_commits_in_the_candle_snapshot(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(5)
    now = START + timedelta(minutes=30)
    deliver(catalog, tables, random_trades(rng, START, now, 200, first_id=1), now=now)
    trades_snapshot = jobs.main_snapshot_id(spark, tables.trades)

    result = jobs.refresh_candles(spark, tables, TIMEFRAMES["5m"], now=now)

    snapshot = jobs.main_snapshot_id(spark, tables.candles(TIMEFRAMES["5m"]))
    assert snapshot is not None and result.candle_snapshot_id == snapshot
    summary = jobs.snapshot_summary(spark, tables.candles(TIMEFRAMES["5m"]), snapshot)
    assert summary[jobs.WATERMARK_PROPERTY] == str(trades_snapshot)
    assert jobs.watermark(spark, tables.candles(TIMEFRAMES["5m"])) == trades_snapshot


def test_batch_run_replaces_only_its_windows(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(11)
    tf = TIMEFRAMES["1h"]
    now = START + timedelta(hours=6)
    trades = random_trades(rng, START, now, 800, first_id=1)
    deliver(catalog, tables, trades, now=now)
    jobs.refresh_candles(spark, tables, tf, now=now)
    before = stored_candles(spark, tables.candles(tf))

    # Given: one more trade in the newest hour, the only window the next run should change
    extra = Trade(
        EXCHANGE,
        "BTC-USD",
        99_999,
        Decimal("123.45"),
        Decimal("0.5"),
        "buy",
        now - timedelta(minutes=10),
    )
    deliver(catalog, tables, [extra], now=now)
    # When: the 1h batch runs with its 2 h lookback, whose windows share a month partition
    # with all the older candles
    result = jobs.refresh_candles(spark, tables, tf, now=now)

    after = stored_candles(spark, tables.candles(tf))
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    window = (
        EXCHANGE,
        "BTC-USD",
        ((now - timedelta(minutes=10) - EPOCH) // timedelta(hours=1)) * 3_600_000_000,
    )
    assert changed == {window}
    assert result.updated + result.inserted == 1
    assert not diff(expected_candles([*trades, extra], tf), after)


def test_backfill_in_chunks_equals_oracle(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(3)
    end = START + timedelta(hours=4)
    trades = random_trades(rng, START, end, 1000, first_id=1)
    deliver(catalog, tables, trades, now=end)
    tf = TIMEFRAMES["5m"]

    results = list(jobs.backfill(spark, tables, tf, START, end, chunk=timedelta(minutes=45)))

    assert len(results) == 6  # 4 hours in 45-minute chunks
    assert sum(r.inserted for r in results) == len(expected_candles(trades, tf))
    assert_matches_oracle(spark, tables, trades, [tf])
    # A backfill does not claim to have processed the trades: the next refresh still checks them.
    assert jobs.watermark(spark, tables.candles(tf)) is None


def test_packed_and_struct_ordering_keys_agree(spark: SparkSession) -> None:
    rng = random.Random(17)
    trades = random_trades(rng, START, START + timedelta(hours=2), 600, first_id=2**40)
    df = spark.createDataFrame(to_arrow(trades).to_pandas())
    low, high = min(t.trade_id for t in trades), max(t.trade_id for t in trades)
    for tf in ALL:
        packed = candles(df, tf, TradeIdRange(low, high))
        plain = candles(df, tf)
        assert packed.exceptAll(plain).count() == 0 and plain.exceptAll(packed).count() == 0
        assert not diff(expected_candles(trades, tf), candle_rows(packed))


def test_packed_key_refuses_a_wrong_trade_id_range(spark: SparkSession) -> None:
    rng = random.Random(19)
    trades = random_trades(rng, START, START + timedelta(minutes=5), 50, first_id=100)
    df = spark.createDataFrame(to_arrow(trades).to_pandas())
    with pytest.raises(PySparkException, match="outside the promised range"):
        candles(df, TIMEFRAMES["1m"], TradeIdRange(100, 120)).collect()


def test_struct_key_is_used_when_trade_ids_do_not_fit(spark: SparkSession) -> None:
    # Ids spread over 2^62 cannot share 64 bits with a microsecond offset, for any timeframe.
    rng = random.Random(23)
    trades = random_trades(rng, START, START + timedelta(hours=1), 300, first_id=0)
    trades = [
        Trade(t.exchange, t.symbol, rng.randrange(2**62), t.price, t.quantity, t.side, t.ts)
        for t in trades
    ]
    df = spark.createDataFrame(to_arrow(trades).to_pandas())
    ids = [t.trade_id for t in trades]
    for tf in ALL:
        result = candles(df, tf, TradeIdRange(min(ids), max(ids)))
        assert not diff(expected_candles(trades, tf), candle_rows(result))
