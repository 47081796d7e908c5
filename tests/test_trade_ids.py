"""Text trade ids on a real Spark Connect server: every candle equal to the oracle, for 1m..1d,
through the incremental MERGE, the live read, gap fill and the upgrade of an old table.

The oracle (tests/support/oracle.py) orders a tie at one ts as documented: numeric ids first,
as numbers, then text ids by code point; nothing of it is shared with the code under test.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from pyiceberg.catalog import Catalog
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession

from core.calendars import GapPolicy, Market
from core.tables import TRADES, Tables, ensure_tables
from core.timeframes import TIMEFRAMES
from ingest import ingest
from spark_jobs import jobs, plan, snapshots
from spark_jobs.candles import TradeIdRange, candles
from spark_jobs.live import live_candles
from tests.support.oracle import (
    LocalTime,
    Trade,
    candle_rows,
    diff,
    expected_candles,
    expected_local_candles,
    stored_candles,
    with_previous_close,
)
from tests.support.trades import (
    ALL,
    EXCHANGE,
    START,
    assert_matches_oracle,
    deliver,
    random_trades,
    to_arrow,
)
from tests.support.upgrade import create_old_trades, old_rows


def with_text_ids(rng: random.Random, trades: list[Trade], share: float = 0.6) -> list[Trade]:
    """About ``share`` of the trades get a text id: a UUID, or ``ETH-<n>`` (whose text order is
    not its numeric order: ETH-10 < ETH-9); the others keep their numeric id."""
    out = []
    for t in trades:
        roll = rng.random()
        if roll < share / 2:
            out.append(dataclasses.replace(t, trade_id=str(uuid.UUID(int=rng.getrandbits(128)))))
        elif roll < share:
            out.append(dataclasses.replace(t, trade_id=f"ETH-{t.trade_id}"))
        else:
            out.append(t)
    return out


def later_trades(
    rng: random.Random, earlier: list[Trade], at: datetime, first_id: int, prefix: str
) -> list[Trade]:
    """Trades of the last few minutes before ``at`` (text and numeric ids), and 30 trades at the
    very instants of ``earlier`` ones (text ids ``<prefix><n>``, other prices): late ties."""
    recent = with_text_ids(rng, random_trades(rng, at - timedelta(minutes=11), at, 200, first_id))
    ties = [
        dataclasses.replace(t, trade_id=f"{prefix}{i}", price=t.price + 1)
        for i, t in enumerate(rng.sample(earlier, 30))
    ]
    return recent + ties


def tie(at: datetime, symbol: str, ids: list[int | str], first_price: int) -> list[Trade]:
    """Trades at one instant, one per id, each at its own price (so the order shows)."""
    return [
        Trade(EXCHANGE, symbol, i, Decimal(first_price + k), Decimal("0.25"), "sell", at)
        for k, i in enumerate(ids)
    ]


# A tie on a day boundary (every timeframe's window starts there), in the order delivered, in
# a symbol of its own: the order is 3, 40, ETH-10, ETH-9, Z-1, b0e5... (numbers first, as
# numbers; then text by code point), so open is 3's price (504) and close b0e5...'s (503).
TIE = tie(
    START + timedelta(hours=2),
    "TIE-USD",
    ["ETH-9", 40, "ETH-10", "b0e5c1c2-0000-4000-8000-000000000000", 3, "Z-1"],
    500,
)


def test_text_and_mixed_ids_equal_the_oracle_through_merge_live_and_redelivery(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(28)
    # Given: three hours of trades, most with text ids, numeric and text in every symbol,
    # ties on ts (random ones and one crafted on a day boundary)
    t1 = START + timedelta(hours=3)
    first = with_text_ids(rng, random_trades(rng, START, t1, 1200, first_id=1_000)) + TIE
    deliver(catalog, tables, first, now=t1)
    # When: every timeframe runs
    for tf in ALL:
        jobs.refresh_candles(spark, tables, tf, now=t1)
    # Then: every candle equals the oracle, the crafted tie included
    assert_matches_oracle(spark, tables, first, ALL)
    for tf in ALL:
        tied = stored_candles(spark, tables.candles(tf))[(EXCHANGE, "TIE-USD", TIE[0].ts_us)]
        assert (tied["open"], tied["close"]) == (Decimal(504), Decimal(503)), tf

    # Given: more trades, some at the very instants of published ones, text and numeric
    t2 = t1 + timedelta(minutes=6)
    later = later_trades(rng, first, t2, 50_000, "late-")
    deliver(catalog, tables, later, now=t2)
    everything = first + later
    # When: the live read runs before the next publication
    one_minute = TIMEFRAMES["1m"]
    live = candle_rows(live_candles(spark, tables, one_minute, now=t2))
    # Then: the live candles (published and provisional) equal the oracle of every trade
    problems = diff(expected_candles(everything, one_minute), live)
    assert not problems, problems[:5]

    # When: every timeframe runs again (1m and 5m through the incremental MERGE)
    results = {tf.name: jobs.refresh_candles(spark, tables, tf, now=t2) for tf in ALL}
    # Then: late trades were merged and every candle equals the oracle
    assert results["1m"].updated > 0 and results["1m"].late_trades > 0
    assert_matches_oracle(spark, tables, everything, ALL)

    # When: every trade is delivered again
    again = ingest(catalog, tables.namespace, to_arrow(everything), source="again", now=t2)
    # Then: all are duplicates, and the next runs write nothing
    assert (again.accepted, again.duplicates) == (0, len(everything))
    for tf in ALL:
        assert not jobs.refresh_candles(spark, tables, tf, now=t2).written


def test_the_packed_key_is_used_only_when_every_id_is_a_number(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(7)
    end = START + timedelta(hours=4)
    numeric = random_trades(rng, START, START + timedelta(hours=1), 300, first_id=1)
    text = with_text_ids(
        rng, random_trades(rng, START + timedelta(hours=2), end, 300, first_id=5_000), share=0.3
    )
    deliver(catalog, tables, numeric + text, now=end)
    pinned = snapshots.main_snapshot_id(spark, tables.trades)
    assert pinned is not None
    # When: a backfill plans its chunks, and a run counts its trades
    chunks = plan.plan_chunks(spark, tables, TIMEFRAMES["1m"], START, end, pinned, 300)
    # Then: the numeric hour knows its id range; chunks with text ids know none
    ids = [t.trade_id for t in numeric if isinstance(t.trade_id, int)]
    assert [c.stats.trade_ids for c in chunks] == [TradeIdRange(min(ids), max(ids)), None]
    frame = spark.read.table(tables.trades)
    assert plan.trade_stats(frame).trade_ids is None
    # And: a range promised for trades with text ids fails the query, never a wrong candle
    with pytest.raises(PySparkException, match="trade_id null or outside"):
        candles(frame, TIMEFRAMES["1m"], TradeIdRange(0, 10**9)).collect()


def test_gap_fill_carries_the_close_of_a_text_id(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    # Given: a tie whose last trade (by the order) has a text id, then three empty minutes
    at = START + timedelta(minutes=10)
    trades = [
        *tie(at, "ETH-USD", ["ETH-2", 7, "ETH-10"], 100),
        *tie(at + timedelta(minutes=4), "ETH-USD", [8], 200),
    ]
    deliver(catalog, tables, trades, now=at + timedelta(minutes=5))
    fill = Market(gap_policies={"1m": GapPolicy.PREVIOUS_CLOSE, "5m": GapPolicy.PREVIOUS_CLOSE})
    for tf in (TIMEFRAMES["1m"], TIMEFRAMES["5m"]):
        jobs.refresh_candles(spark, tables, tf, now=at + timedelta(minutes=5), market=fill)
        # Then: real and filled candles equal the oracle; the order is 7, ETH-10, ETH-2, so
        # the fills carry ETH-2's price (100)
        want = with_previous_close(
            expected_local_candles(trades, tf.width, lambda e, s: LocalTime()),
            tf.width,
            lambda e, s: LocalTime(),
        )
        got = stored_candles(spark, tables.candles(tf))
        assert not diff(want, got), diff(want, got)[:5]
    closes = {c["close"] for c in stored_candles(spark, tables.candles(TIMEFRAMES["1m"])).values()}
    assert closes == {Decimal(100), Decimal(200)}


def test_an_old_trades_table_is_upgraded_in_place_and_keeps_every_candle(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(2028)
    # Given: trades as the old code created and wrote them (numeric ids), and their candles
    t1 = START + timedelta(hours=3)
    old = random_trades(rng, START, t1, 800, first_id=1)
    table = create_old_trades(catalog, tables.namespace)
    table.append(old_rows(old, t1))
    for tf in ALL:
        jobs.refresh_candles(spark, tables, tf, now=t1)
    assert_matches_oracle(spark, tables, old, ALL)
    before = {tf.name: stored_candles(spark, tables.candles(tf)) for tf in ALL}

    # When: this version's ensure_tables runs, twice
    ensure_tables(catalog, tables.namespace)
    upgraded = catalog.load_table((tables.namespace, TRADES))
    ensure_tables(catalog, tables.namespace)
    # Then: the second call changed nothing; every trade and candle is still there
    assert catalog.load_table((tables.namespace, TRADES)).metadata_location == (
        upgraded.metadata_location
    )
    assert spark.read.table(tables.trades).count() == len(old)
    for tf in ALL:
        assert stored_candles(spark, tables.candles(tf)) == before[tf.name]

    # Given: text ids arrive, some tied with old trades at their very instant, some late
    t2 = t1 + timedelta(minutes=6)
    new = later_trades(rng, old, t2, 10_000, "ETH-")
    deliver(catalog, tables, new, now=t2)
    # When: every timeframe runs (1m and 5m incrementally, from the old snapshot's watermark)
    for tf in ALL:
        jobs.refresh_candles(spark, tables, tf, now=t2)
    # Then: every candle equals the oracle of old and new trades
    everything = old + new
    assert_matches_oracle(spark, tables, everything, ALL)
    # And: old and new trades delivered again are all duplicates
    again = ingest(catalog, tables.namespace, to_arrow(everything), source="again", now=t2)
    assert (again.accepted, again.duplicates) == (0, len(everything))
