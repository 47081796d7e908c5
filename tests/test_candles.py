"""Candles against the independent oracle, on a real Spark Connect server and Iceberg tables."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from decimal import Decimal
from typing import cast

import pytest
from pyiceberg.catalog import Catalog
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.calendars import calendars_from
from core.ranges import Range, lookback_range
from core.tables import Tables
from core.timeframes import TIMEFRAMES
from flows.backfill import Backfill, run_backfill
from settings import Settings
from spark_jobs import jobs, plan, snapshots
from spark_jobs.candles import TradeIdRange, candles
from spark_jobs.reads import in_ranges
from tests.support.oracle import EPOCH, Trade, candle_rows, diff, expected_candles, stored_candles
from tests.support.stacks import Given, on_shapes
from tests.support.trades import (
    ALL,
    EXCHANGE,
    START,
    assert_matches_oracle,
    bad_rows,
    deliver,
    id_range,
    random_trades,
    to_arrow,
)


@on_shapes()  # SQLite, PostgreSQL, REST + S3
def test_every_timeframe_equals_oracle_through_late_trades_and_reruns(
    given: Given, request: pytest.FixtureRequest
) -> None:
    _, spark, catalog, tables = given
    # The other catalogs run the shortest and the longest timeframe (hour and year partitions,
    # the 1m run's late trades): what differs between catalogs is the commits, not the
    # arithmetic, which SQLite checks for all five.
    every = ALL
    if request.node.callspec.params["shape"] != "sqlite":
        every = [TIMEFRAMES["1m"], TIMEFRAMES["1d"]]
    rng = random.Random(20260301)
    # Given: three hours of trades, delivered with duplicates and bad rows
    t1 = START + timedelta(hours=3)
    first = random_trades(rng, START, t1, 1500, first_id=1_000)
    deliver(catalog, tables, first, to_arrow(first[:40]), bad_rows(900_000), now=t1)
    # When: every timeframe runs once
    for tf in every:
        jobs.refresh_candles(spark, tables, tf, now=t1)
    # Then: every table equals the oracle over the accepted trades
    assert_matches_oracle(spark, tables, first, every)

    # Given: trades inside the lookback, late trades far beyond every short lookback
    # (2.5 to 3 hours old), and re-deliveries of old trades
    t2 = t1 + timedelta(minutes=6)
    recent = random_trades(rng, t1 - timedelta(minutes=5), t2, 300, first_id=10_000)
    late = random_trades(rng, START, START + timedelta(minutes=30), 200, first_id=20_000)
    deliver(catalog, tables, recent + late, to_arrow(first[100:130]), now=t2)
    # When: every timeframe runs again
    results = {tf.name: jobs.refresh_candles(spark, tables, tf, now=t2) for tf in every}
    # Then: the late trades were picked up and every table still equals the oracle
    lookback_start = lookback_range(TIMEFRAMES["1m"], t2).start
    assert results["1m"].late_trades == sum(t.ts < lookback_start for t in recent + late) > 200
    assert results["1m"].updated > 0 and results["1m"].inserted > 0
    everything = first + recent + late
    assert_matches_oracle(spark, tables, everything, every)

    # When: the same runs repeat with no new trades
    before = {tf.name: snapshots.main_snapshot_id(spark, tables.candles(tf)) for tf in every}
    reruns = {tf.name: jobs.refresh_candles(spark, tables, tf, now=t2) for tf in every}
    # Then: nothing is written (no snapshot), so the content is the one checked above (an
    # Iceberg snapshot never changes: reading all five tables again could not fail alone)
    for tf in every:
        assert not reruns[tf.name].written
        assert reruns[tf.name].unchanged > 0
        assert snapshots.main_snapshot_id(spark, tables.candles(tf)) == before[tf.name]


def test_watermark_commits_in_the_candle_snapshot(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(5)
    now = START + timedelta(minutes=30)
    deliver(catalog, tables, random_trades(rng, START, now, 200, first_id=1), now=now)
    trades_snapshot = snapshots.main_snapshot_id(spark, tables.trades)

    result = jobs.refresh_candles(spark, tables, TIMEFRAMES["5m"], now=now)

    snapshot = snapshots.main_snapshot_id(spark, tables.candles(TIMEFRAMES["5m"]))
    assert snapshot is not None and result.candle_snapshot_id == snapshot
    summary = snapshots.snapshot_summary(spark, tables.candles(TIMEFRAMES["5m"]), snapshot)
    assert summary[snapshots.WATERMARK_PROPERTY] == str(trades_snapshot)
    assert snapshots.watermark(spark, tables.candles(TIMEFRAMES["5m"])) == trades_snapshot


@on_shapes()  # SQLite, PostgreSQL, REST + S3
def test_batch_run_replaces_only_its_windows(given: Given) -> None:
    _, spark, catalog, tables = given
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


@on_shapes()  # SQLite, PostgreSQL, REST + S3
def test_backfill_in_chunks_equals_oracle(given: Given) -> None:
    run_settings, spark, catalog, tables = given
    rng = random.Random(3)
    end = START + timedelta(hours=4)
    trades = random_trades(rng, START, end, 1000, first_id=1)
    deliver(catalog, tables, trades, now=end)
    tf = TIMEFRAMES["5m"]

    # (90-minute chunks: three, the last one shorter; each chunk is a commit, and this test
    # also runs on PostgreSQL and REST + S3)
    results = _runs(
        run_backfill(run_settings, tf, START, end, chunk=timedelta(minutes=90), spark=spark)
    )

    assert len(results) == 3  # 4 hours: 90 + 90 + 60 minutes
    assert sum(r.inserted for r in results) == len(expected_candles(trades, tf))
    assert_matches_oracle(spark, tables, trades, [tf])
    # The backfill covered every trade of the snapshot it read, so it records that snapshot as
    # the watermark (and only then): the next refresh has no new trade to read.
    trades_snapshot = snapshots.main_snapshot_id(spark, tables.trades)
    assert results[0].trades_snapshot_id == results[-1].trades_snapshot_id == trades_snapshot
    assert [r.watermark for r in results] == [None] * 2 + [trades_snapshot]
    assert snapshots.watermark(spark, tables.candles(tf)) == trades_snapshot
    assert jobs.refresh_candles(spark, tables, tf, now=end).new_trades == 0
    assert_matches_oracle(spark, tables, trades, [tf])


def _runs(backfill: Backfill) -> list[jobs.RunResult]:
    """Run the backfill's chunks; what each chunk's candle job did."""
    runs = [done.metrics.run for done in backfill]
    assert all(run is not None for run in runs)
    return cast(list[jobs.RunResult], runs)


def test_backfill_in_chunks_of_trades_equals_oracle(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    rng = random.Random(7)
    end = START + timedelta(hours=5)
    # Given: a busy first hour, a quiet rest, and one hour with no trade at all
    busy = random_trades(rng, START, START + timedelta(hours=1), 500, first_id=1)
    quiet = random_trades(rng, START + timedelta(hours=2), end, 300, first_id=10_000)
    trades = busy + quiet
    deliver(catalog, tables, trades, now=end)
    tf = TIMEFRAMES["1m"]
    pinned = snapshots.main_snapshot_id(spark, tables.trades)
    assert pinned is not None

    # When: the chunks are planned by trades, at most 350 each (an hour is never split)
    chunks = plan.plan_chunks(spark, tables, tf, START, end, pinned, 350)
    # Then: they tile the range in whole windows, and each knows its trades exactly
    assert chunks[0].window_range.start == START and chunks[-1].window_range.end == end
    for before, after in itertools.pairwise(chunks):
        assert before.window_range.end == after.window_range.start
    for chunk in chunks:
        inside = [t for t in trades if chunk.window_range.start <= t.ts < chunk.window_range.end]
        assert chunk.stats.trades == len(inside)
        if inside:
            assert chunk.stats.trade_ids == id_range(inside)
        assert chunk.stats.trades <= 350 or len({t.ts.hour for t in inside}) == 1
    # the busy hour (with the empty one after it), then the quiet hours together
    assert [c.stats.trades for c in chunks] == [500, 300]

    # When: the backfill runs in those chunks on an empty table (a first fill)
    results = _runs(run_backfill(run_settings, tf, START, end, chunk_trades=350, spark=spark))
    # Then: the candles equal the oracle, and the last chunk records the watermark
    assert [r.ranges[0] for r in results] == [c.window_range for c in chunks]
    assert sum(r.inserted for r in results) == len(expected_candles(trades, tf))
    assert sum(r.trades_read for r in results) == len(trades)
    assert_matches_oracle(spark, tables, trades, [tf])
    assert snapshots.watermark(spark, tables.candles(tf)) == pinned

    # When: a late trade lands in the first hour and the same backfill runs again from the
    # start (not a first fill: the stored candles are compared and only what changed is written)
    late = Trade(EXCHANGE, "BTC-USD", 99_999, Decimal("42.5"), Decimal("2"), "sell", START)
    deliver(catalog, tables, [late], now=end)
    again = _runs(
        run_backfill(run_settings, tf, START, end, chunk_trades=350, restart=True, spark=spark)
    )
    # Then: one candle is updated, nothing else is written, and the oracle still holds
    assert sum(r.updated for r in again) == 1 and sum(r.inserted for r in again) == 0
    assert_matches_oracle(spark, tables, [*trades, late], [tf])


def test_packed_and_struct_ordering_keys_agree(spark: SparkSession) -> None:
    rng = random.Random(17)
    trades = random_trades(rng, START, START + timedelta(hours=2), 600, first_id=2**40)
    df = spark.createDataFrame(to_arrow(trades).to_pandas())
    for tf in ALL:
        packed = candles(df, tf, id_range(trades))
        plain = candles(df, tf)
        assert packed.exceptAll(plain).count() == 0 and plain.exceptAll(packed).count() == 0
        assert not diff(expected_candles(trades, tf), candle_rows(packed))


def test_a_timeframe_whose_key_cannot_pack_the_ids_is_rolled_up_from_minutes(
    spark: SparkSession,
) -> None:
    # Ids spread over 2^30: a minute's packed key holds them (37 bits are left), a day's does
    # not (25), so daily candles come from minutes rolled up: equal to the oracle and to the
    # struct key, with hash aggregations only (the struct key sorts every trade).
    rng = random.Random(29)
    spread = 2**21
    trades = [
        Trade(t.exchange, t.symbol, t.trade_id * spread, t.price, t.quantity, t.side, t.ts)
        for t in random_trades(rng, START, START + timedelta(days=2), 500, first_id=1)
    ]
    ids = id_range(trades)
    assert ids.high - ids.low >= 2**29
    df = spark.createDataFrame(to_arrow(trades).to_pandas())
    day = TIMEFRAMES["1d"]
    rolled = candles(df, day, ids)
    assert not diff(expected_candles(trades, day), candle_rows(rolled))
    plan = rolled._explain_string(mode="simple")  # type: ignore[operator]
    assert "HashAggregate" in plan and "SortAggregate" not in plan, plan
    local = calendars_from([{"exchange": EXCHANGE, "zone": "Asia/Kolkata"}])
    in_kolkata = candles(df, day, ids, local)
    struct_key = candles(df, day, None, local)
    assert in_kolkata.count() > 0
    assert in_kolkata.exceptAll(struct_key).count() == 0
    assert struct_key.exceptAll(in_kolkata).count() == 0


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
    for tf in ALL:
        result = candles(df, tf, id_range(trades))
        assert not diff(expected_candles(trades, tf), candle_rows(result))


def test_a_filter_of_many_time_ranges_reaches_the_server(spark: SparkSession) -> None:
    # 64 disjoint ranges (the most a run keeps) as one filter: as a chain of ORs it nested
    # deeper than Spark Connect decodes; the first run after a sparse backfill hit that.
    minutes = spark.range(0, 1000).select(F.timestamp_micros(F.col("id") * 60_000_000).alias("ts"))
    ranges = [
        Range(EPOCH + timedelta(minutes=10 * i), EPOCH + timedelta(minutes=10 * i + 3))
        for i in range(64)
    ]
    assert minutes.where(in_ranges(F.col("ts"), ranges)).count() == 64 * 3
