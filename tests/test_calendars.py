"""Local time and gaps against the independent oracle, across the 2026 daylight saving switches.

Instruments: BTC-USD (UTC, the default), SPY (America/New_York, midnight to midnight), AAPL
(America/New_York, session 09:30-16:00 Monday to Friday), VOD (Europe/London) and INFY
(Asia/Kolkata, +05:30). Each trades once in every local minute of a few local days around the
switches (US: 8 March, 1 November; EU: 29 March, 25 October), plus ties and boundary trades near
each switch, so the number of one-minute windows of a local day is its length in minutes
(AAPL only in the hours around its session's open and close).

The module's story runs once: the five timeframes through the real pipeline (generate,
validate, publish) with the Spark session's time zone and this process's TZ set to zones no
instrument uses. The oracle (tests/support/oracle.py) derives windows from zoneinfo wall-clock
rules; it shares no code with core/calendars.py or the Spark column logic.
"""

from __future__ import annotations

import json
import os
import random
import time as clock
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.calendars import (
    CalendarError,
    Calendars,
    GapPolicy,
    Market,
    calendars_from,
    parse_calendars,
    parse_gap_policies,
)
from core.tables import Tables, ensure_tables
from core.timeframes import TIMEFRAMES
from flows import pipeline
from flows.pipeline import RunRequest
from flows.results import PipelineResult
from settings import Settings
from spark_jobs import jobs, snapshots
from spark_jobs.candles import candles
from tests.support.oracle import (
    EPOCH,
    LocalTime,
    Trade,
    candle_rows,
    diff,
    expected_local_candles,
    local_window,
    stored_candles,
    with_previous_close,
)
from tests.support.spark_ui import records_read
from tests.support.trades import deliver

ALL = list(TIMEFRAMES.values())
NY, LONDON, KOLKATA = "America/New_York", "Europe/London", "Asia/Kolkata"
DECLARED = [
    {"exchange": "us", "zone": NY},
    {"exchange": "us", "symbol": "AAPL", "zone": NY, "session": "09:30-16:00"},
    {"exchange": "lse", "zone": LONDON},
    {"exchange": "nse", "zone": KOLKATA},
]
LOCAL = {
    ("crypto", "BTC-USD"): LocalTime("UTC"),
    ("us", "SPY"): LocalTime(NY),
    ("us", "AAPL"): LocalTime(NY, (time(9, 30), time(16)), frozenset(range(5))),
    ("lse", "VOD"): LocalTime(LONDON),
    ("nse", "INFY"): LocalTime(KOLKATA),
}
# Local trading days with trades: the switch days, chosen to overlap in UTC so the data stays
# small (a 1m table partition per UTC hour). BTC-USD's and INFY's plain days sit beside them.
DAYS = {
    ("crypto", "BTC-USD"): [date(2026, 3, 8)],
    ("us", "SPY"): [date(2026, 3, 8), date(2026, 11, 1)],  # 23 and 25 hours
    ("lse", "VOD"): [date(2026, 3, 29), date(2026, 10, 25)],  # 23 and 25 hours
    ("nse", "INFY"): [date(2026, 3, 29)],
}
# AAPL trades only around its session's open and close (local hours), on a Friday before the
# US switch, the Monday after it (EDT) and the Sunday of the fall-back (no session).
AAPL_HOURS = {
    date(2026, 3, 6): ((9, 10), (15, 16)),
    date(2026, 3, 9): ((9, 10), (15, 16)),
    date(2026, 11, 1): ((1, 2),),
}
# Machine and session zones no instrument uses (Kathmandu is +05:45, Chatham +12:45/+13:45).
MACHINE_TZ = "Pacific/Chatham"
SESSION_TZ = "Asia/Kathmandu"


def local_of(exchange: str, symbol: str) -> LocalTime:
    return LOCAL[(exchange, symbol)]


def midnight(day: date, zone: str) -> datetime:
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(zone)).astimezone(UTC)


def day_trades(
    rng: random.Random,
    exchange: str,
    symbol: str,
    day: date,
    first_id: int,
    hours: tuple[int, int] | None = None,
) -> list[Trade]:
    """One trade in every minute of the local day, or of local ``hours`` [from, to) that day
    (some exactly on the minute), and ties and trades in the hours around 01:00-03:00 local,
    where the switches happen."""
    zone = local_of(exchange, symbol).zone
    start, end = midnight(day, zone), midnight(day + timedelta(days=1), zone)
    if hours is not None:
        tz = ZoneInfo(zone)
        start = datetime.combine(day, time(hours[0]), tzinfo=tz).astimezone(UTC)
        end = datetime.combine(day, time(hours[1] - 1, 59), tzinfo=tz).astimezone(UTC)
        end += timedelta(minutes=1)
    stamps = []
    t = start
    while t < end:
        stamps.append(
            t if rng.random() < 0.2 else t + timedelta(microseconds=rng.randrange(60_000_000))
        )
        t += timedelta(minutes=1)
    switch = start + timedelta(hours=1)
    for _ in range(40):
        roll = rng.random()
        if roll < 0.4 or hours is not None:
            stamps.append(rng.choice(stamps))  # a tie on ts: trade_id breaks it
        else:
            stamps.append(switch + timedelta(minutes=rng.randrange(180)))
    ids = list(range(first_id, first_id + len(stamps)))
    rng.shuffle(ids)
    return [
        Trade(
            exchange,
            symbol,
            ids[i],
            Decimal(rng.randrange(1, 10**10)) / Decimal(10**6),
            Decimal(rng.randrange(1, 10**9)) / Decimal(10**8),
            rng.choice(["buy", "sell"]),
            ts,
        )
        for i, ts in enumerate(stamps)
    ]


@dataclass
class Story:
    tables: Tables
    settings: Settings
    trades: list[Trade]
    results: dict[str, PipelineResult]
    seconds: float


@pytest.fixture(scope="module")
def story(
    spark: SparkSession,
    catalog: Catalog,
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Story]:
    namespace = f"cal_{uuid.uuid4().hex[:10]}"
    ensure_tables(catalog, namespace)
    tables = Tables(settings.catalog_name, namespace)
    rng = random.Random(2026)
    trades: list[Trade] = []
    for (exchange, symbol), days in DAYS.items():
        for day in days:
            trades += day_trades(rng, exchange, symbol, day, first_id=len(trades) * 2 + 1)
    for day, spans in AAPL_HOURS.items():
        for span in spans:
            trades += day_trades(rng, "us", "AAPL", day, len(trades) * 2 + 1, span)
    now = max(t.ts for t in trades) + timedelta(minutes=1)
    deliver(catalog, tables, trades, now=now)
    run_settings = settings.model_copy(
        update={
            "namespace": namespace,
            "gx_dir": tmp_path_factory.mktemp("gx"),
            "calendars": json.dumps(DECLARED),
        }
    )
    saved_tz = os.environ.get("TZ")
    os.environ["TZ"] = MACHINE_TZ
    clock.tzset()
    spark.conf.set("spark.sql.session.timeZone", SESSION_TZ)
    try:
        started = clock.monotonic()
        results = {
            tf.name: pipeline.run_pipeline(spark, run_settings, tf, RunRequest(now=now))
            for tf in ALL
        }
        yield Story(tables, run_settings, trades, results, clock.monotonic() - started)
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        if saved_tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved_tz
        clock.tzset()


def test_every_field_of_every_timeframe_equals_the_oracle_in_local_time(
    spark: SparkSession, story: Story
) -> None:
    for tf in ALL:
        want = expected_local_candles(story.trades, tf.width, local_of)
        got = stored_candles(spark, story.tables.candles(tf))
        problems = diff(want, got)
        assert not problems, f"{tf}: {len(problems)} differences, first: {problems[:5]}"


def test_a_local_day_has_as_many_windows_as_it_has_minutes_and_hours(
    spark: SparkSession, story: Story
) -> None:
    for tf, unit in (
        (TIMEFRAMES["1m"], timedelta(minutes=1)),
        (TIMEFRAMES["1h"], timedelta(hours=1)),
    ):
        counts = {
            (r["exchange"], r["symbol"], r["trading_date"]): r["n"]
            for r in spark.read.table(story.tables.candles(tf))
            .groupBy("exchange", "symbol", "trading_date")
            .agg(F.count(F.lit(1)).alias("n"))
            .collect()
            if (r["exchange"], r["symbol"]) in DAYS  # AAPL trades some hours only
        }
        want = {
            (e, s, d): (
                midnight(d + timedelta(days=1), local_of(e, s).zone)
                - midnight(d, local_of(e, s).zone)
            )
            // unit
            for (e, s), days in DAYS.items()
            for d in days
        }
        assert counts == want
    # The figures the issue names: 23-, 24- and 25-hour days in one-minute windows.
    one_minute = {
        (r["symbol"], r["trading_date"]): r["n"]
        for r in spark.read.table(story.tables.candles(TIMEFRAMES["1m"]))
        .groupBy("symbol", "trading_date")
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    }
    assert one_minute[("SPY", date(2026, 3, 8))] == 1380
    assert one_minute[("SPY", date(2026, 11, 1))] == 1500
    assert one_minute[("VOD", date(2026, 3, 29))] == 1380
    assert one_minute[("VOD", date(2026, 10, 25))] == 1500
    assert (
        one_minute[("INFY", date(2026, 3, 29))] == one_minute[("BTC-USD", date(2026, 3, 8))] == 1440
    )


def test_daily_windows_are_local_days_or_sessions_never_split_or_doubled(
    spark: SparkSession, story: Story
) -> None:
    rows = spark.read.table(story.tables.candles(TIMEFRAMES["1d"])).select(
        "symbol",
        "trading_date",
        F.unix_micros("window_start").alias("start"),
        F.unix_micros("window_end").alias("end"),
    )
    daily = {(r["symbol"], r["trading_date"]): (r["start"], r["end"]) for r in rows.collect()}
    hours = {k: (end - start) / 3_600_000_000 for k, (start, end) in daily.items()}
    assert hours[("BTC-USD", date(2026, 3, 8))] == 24
    assert hours[("SPY", date(2026, 3, 8))] == 23
    assert hours[("SPY", date(2026, 11, 1))] == 25
    assert hours[("VOD", date(2026, 3, 29))] == 23
    assert hours[("VOD", date(2026, 10, 25))] == 25
    assert hours[("INFY", date(2026, 3, 29))] == 24
    # INFY's day starts at local midnight, 18:30 UTC the day before
    assert daily[("INFY", date(2026, 3, 29))][0] == _us(datetime(2026, 3, 28, 18, 30, tzinfo=UTC))
    # AAPL: the session only, on weekdays; 09:30 New York is 14:30 UTC in winter, 13:30 in summer
    aapl = {d: v for (s, d), v in daily.items() if s == "AAPL"}
    assert aapl == {
        date(2026, 3, 6): (
            _us(datetime(2026, 3, 6, 14, 30, tzinfo=UTC)),
            _us(datetime(2026, 3, 6, 21, tzinfo=UTC)),
        ),
        date(2026, 3, 9): (
            _us(datetime(2026, 3, 9, 13, 30, tzinfo=UTC)),
            _us(datetime(2026, 3, 9, 20, tzinfo=UTC)),
        ),
    }
    # Every 1d window holds exactly one local date: no day is split or doubled.
    assert len(daily) == sum(len(days) for days in DAYS.values()) + 2  # AAPL: not on Sunday
    # Kolkata's hours start at :30 UTC
    infy_hours = (
        spark.read.table(story.tables.candles(TIMEFRAMES["1h"]))
        .where(F.col("symbol") == "INFY")
        .select(F.pmod(F.unix_micros("window_start"), F.lit(3_600_000_000)).alias("r"))
        .distinct()
        .collect()
    )
    assert [r["r"] for r in infy_hours] == [1_800_000_000]


def test_the_suites_validate_local_windows_and_reconcile_every_timeframe(story: Story) -> None:
    for name, result in story.results.items():
        assert result.published, name
        validation = result.validation
        assert validation.invariants is not None and validation.invariants.success, (
            validation.invariants and validation.invariants.describe_failures()
        )
        if name != "1m":
            assert validation.reconciliation is not None
            assert validation.reconciliation_gating, name
            assert validation.reconciliation.success, validation.reconciliation.describe_failures()


def test_candles_do_not_depend_on_the_session_or_machine_time_zone(
    spark: SparkSession, story: Story
) -> None:
    trades = spark.read.table(story.tables.trades)
    calendars = story.settings.market().calendars
    for tf in (TIMEFRAMES["1h"], TIMEFRAMES["1d"]):
        want = expected_local_candles(story.trades, tf.width, local_of)
        for zone in ("America/Los_Angeles", "Pacific/Kiritimati"):
            spark.conf.set("spark.sql.session.timeZone", zone)
            try:
                got = candle_rows(candles(trades, tf, calendars=calendars))
            finally:
                spark.conf.set("spark.sql.session.timeZone", "UTC")
            assert not diff(want, got), f"{tf} with session time zone {zone}"


def test_a_rerun_without_new_trades_commits_nothing(spark: SparkSession, story: Story) -> None:
    before = {tf.name: snapshots.main_snapshot_id(spark, story.tables.candles(tf)) for tf in ALL}
    market = story.settings.market()
    now = max(t.ts for t in story.trades) + timedelta(minutes=1)
    for tf in ALL:
        rerun = jobs.refresh_candles(
            spark, story.tables, tf, now=now, lookback=timedelta(days=2), market=market
        )
        assert not rerun.written and rerun.unchanged > 0, tf
    after = {tf.name: snapshots.main_snapshot_id(spark, story.tables.candles(tf)) for tf in ALL}
    assert after == before


# Gap policy previous_close -------------------------------------------------------------------

GAP_TFS = [TIMEFRAMES["1m"], TIMEFRAMES["5m"]]
GAPS = Market(
    calendars_from([{"exchange": "us", "zone": NY}]),
    {"1m": GapPolicy.PREVIOUS_CLOSE, "5m": GapPolicy.PREVIOUS_CLOSE},
)
GAP_LOCAL = {("us", "QQQ"): LocalTime(NY), ("crypto", "ETH-USD"): LocalTime("UTC")}


def gap_local(exchange: str, symbol: str) -> LocalTime:
    return GAP_LOCAL[(exchange, symbol)]


def _trade(exchange: str, symbol: str, trade_id: int, price: str, ts: datetime) -> Trade:
    return Trade(exchange, symbol, trade_id, Decimal(price), Decimal("0.5"), "buy", ts)


def _expected_with_gaps(trades: list[Trade]) -> dict[str, Any]:
    return {
        tf.name: with_previous_close(
            expected_local_candles(trades, tf.width, gap_local), tf.width, gap_local
        )
        for tf in GAP_TFS
    }


def test_gaps_are_filled_at_the_previous_close_and_a_late_trade_replaces_the_fill(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    # New York falls back on 1 November 2026 at 06:00 UTC: 01:00-02:00 local happens twice.
    t0 = datetime(2026, 11, 1, 4, 58, 10, tzinfo=UTC)  # 00:58 EDT
    first = [
        _trade("us", "QQQ", 1, "100", t0),
        _trade("us", "QQQ", 2, "101", t0 + timedelta(minutes=5)),  # 01:03 EDT
        _trade("us", "QQQ", 3, "99", datetime(2026, 11, 1, 6, 20, tzinfo=UTC)),  # 01:20 EST
        _trade("us", "QQQ", 4, "98", datetime(2026, 11, 1, 7, 5, 30, tzinfo=UTC)),  # 02:05 EST
        _trade("crypto", "ETH-USD", 5, "2000", t0),
        _trade("crypto", "ETH-USD", 6, "2001", datetime(2026, 11, 1, 7, 1, tzinfo=UTC)),
    ]
    now = datetime(2026, 11, 1, 7, 8, tzinfo=UTC)
    deliver(catalog, tables, first, now=now)
    gap_settings = run_settings.model_copy(
        update={
            "calendars": json.dumps([{"exchange": "us", "zone": NY}]),
            "gap_policy": "1m=previous_close,5m=previous_close",
        }
    )
    # When: the pipeline runs (first run: every trade is new, whatever the lookback)
    results = {
        tf.name: pipeline.run_pipeline(spark, gap_settings, tf, RunRequest(now=now))
        for tf in GAP_TFS
    }
    # Then: real and synthetic candles equal the oracle, and the suites accept them
    want = _expected_with_gaps(first)
    for tf in GAP_TFS:
        assert results[tf.name].published
        assert not diff(want[tf.name], stored_candles(spark, tables.candles(tf))), tf
    # QQQ 04:58..07:05 is 128 minutes with 4 trades, ETH-USD 04:58..07:01 is 124 with 2
    assert sum(1 for c in want["1m"].values() if c["synthetic"]) == (128 - 4) + (124 - 2)
    # The gap report counts, per symbol and local day, the windows without trades (warning)
    report = results["1m"].validation
    assert report.gaps is not None and not report.gaps.success and report.passed
    empty = {(r["symbol"], r["trading_date"]): r["empty_windows"] for r in report.gap_rows}
    assert empty == _oracle_empty_windows(want["1m"])

    # Given: a late trade inside a filled window (01:40 EST), far before the lookback
    late = _trade("us", "QQQ", 7, "120", datetime(2026, 11, 1, 6, 40, 5, tzinfo=UTC))
    later = now + timedelta(minutes=30)
    deliver(catalog, tables, [late], now=later)
    runs = {
        tf.name: jobs.refresh_candles(spark, tables, tf, now=later, market=GAPS) for tf in GAP_TFS
    }
    # Then: the fill is replaced by a real candle and the fills after it carry its close
    want = _expected_with_gaps([*first, late])
    for tf in GAP_TFS:
        assert runs[tf.name].updated > 0
        assert not diff(want[tf.name], stored_candles(spark, tables.candles(tf))), tf
    key = ("us", "QQQ", _us(datetime(2026, 11, 1, 6, 40, tzinfo=UTC)))
    assert stored_candles(spark, tables.candles(TIMEFRAMES["1m"]))[key]["synthetic"] is False

    # Given: QQQ trades again after three quiet hours; its last candle is far behind the lookback
    resumed = _trade("us", "QQQ", 8, "97", datetime(2026, 11, 1, 10, 12, tzinfo=UTC))
    at = datetime(2026, 11, 1, 10, 14, tzinfo=UTC)
    deliver(catalog, tables, [resumed], now=at)
    runs = {tf.name: jobs.refresh_candles(spark, tables, tf, now=at, market=GAPS) for tf in GAP_TFS}
    # Then: the three hours are filled too, at the close before them
    want = _expected_with_gaps([*first, late, resumed])
    for tf in GAP_TFS:
        assert not diff(want[tf.name], stored_candles(spark, tables.candles(tf))), tf
    # and a rerun commits nothing
    before = snapshots.main_snapshot_id(spark, tables.candles(TIMEFRAMES["1m"]))
    assert not jobs.refresh_candles(spark, tables, TIMEFRAMES["1m"], now=at, market=GAPS).written
    assert snapshots.main_snapshot_id(spark, tables.candles(TIMEFRAMES["1m"])) == before


def _oracle_empty_windows(candles: dict[Any, dict[str, Any]]) -> dict[tuple[str, date], int]:
    out: dict[tuple[str, date], int] = {}
    for (_, symbol, _), c in candles.items():
        key = (symbol, c["trading_date"])
        out[key] = out.get(key, 0) + (1 if c["synthetic"] else 0)
    return out


def test_filling_gaps_reads_the_trades_no_more_often_than_a_run_without_gaps(
    spark: SparkSession, catalog: Catalog, settings: Settings
) -> None:
    # Given: the same trades in two namespaces, one refreshed with gap policy previous_close
    t0 = datetime(2026, 11, 1, 4, 58, 10, tzinfo=UTC)
    trades = [
        _trade("us" if i % 2 else "crypto", "QQQ" if i % 2 else "ETH-USD", i + 1, "100", t)
        for i, t in enumerate(t0 + timedelta(minutes=3 * k, seconds=k) for k in range(40))
    ]
    now = max(t.ts for t in trades) + timedelta(minutes=1)
    plain, gaps = (Tables(settings.catalog_name, f"gr_{uuid.uuid4().hex[:10]}") for _ in range(2))
    for tables in (plain, gaps):
        ensure_tables(catalog, tables.namespace)
        deliver(catalog, tables, trades, now=now)
    tf = TIMEFRAMES["1m"]
    no_fill = Market(GAPS.calendars)

    # When: each is refreshed once
    read_plain = records_read(
        settings.ui_port,
        lambda: jobs.refresh_candles(spark, plain, tf, now=now, market=no_fill),
    )
    read_gaps = records_read(
        settings.ui_port, lambda: jobs.refresh_candles(spark, gaps, tf, now=now, market=GAPS)
    )

    # Then: both equal their oracles, and filling the gaps read the trades at most once more
    # (those after the span, for the symbols trading on); the real candles it fills between
    # are computed from the trades once, not once for each use (their symbols, their bounds,
    # their closes, themselves)
    want = expected_local_candles(trades, tf.width, gap_local)
    assert not diff(want, stored_candles(spark, plain.candles(tf)))
    assert not diff(
        with_previous_close(want, tf.width, gap_local), stored_candles(spark, gaps.candles(tf))
    )
    print(f"rows read: {read_plain} without gap filling, {read_gaps} with")
    assert read_plain >= 2 * len(trades), read_plain  # (the counter counts these reads)
    assert read_gaps <= read_plain + len(trades), (read_gaps, read_plain)


# An earlier version's table -------------------------------------------------------------------


def test_a_candle_table_without_the_new_columns_reads_and_is_upgraded_once(
    spark: SparkSession, catalog: Catalog, settings: Settings
) -> None:
    from pyiceberg.schema import Schema

    from core.tables import CANDLE_SCHEMA
    from read import read_candles

    namespace = f"old_{uuid.uuid4().hex[:10]}"
    catalog.create_namespace(namespace)
    old = Schema(*[f for f in CANDLE_SCHEMA.fields if f.name not in ("trading_date", "synthetic")])
    catalog.create_table((namespace, "ohlcv_1m"), schema=old)
    tables = Tables(settings.catalog_name, namespace)
    start = datetime(2026, 3, 2, 10, tzinfo=UTC)
    row = spark.createDataFrame(
        [("x", "BTC-USD", start, start + timedelta(minutes=1))],
        "exchange string, symbol string, window_start timestamp, window_end timestamp",
    )
    row.select(
        *[
            F.col(f.name)
            if f.name in row.columns
            else F.lit(None)
            .cast(spark.read.table(tables.candles(TIMEFRAMES["1m"])).schema[f.name].dataType)
            .alias(f.name)
            for f in old.fields
        ]
    ).writeTo(tables.candles(TIMEFRAMES["1m"])).append()
    own = settings.model_copy(update={"namespace": namespace})
    # An earlier version's table reads, with the new columns empty
    frame = read_candles("1m", settings=own, catalog=catalog)
    assert (
        len(frame) == 1 and frame["synthetic"].isna().all() and frame["trading_date"].isna().all()
    )
    # ensure_tables adds them (one commit), and a second call changes nothing
    ensure_tables(catalog, namespace)
    upgraded = catalog.load_table((namespace, "ohlcv_1m"))
    assert {"trading_date", "synthetic"} <= {f.name for f in upgraded.schema().fields}
    metadata = upgraded.metadata_location
    ensure_tables(catalog, namespace)
    assert catalog.load_table((namespace, "ohlcv_1m")).metadata_location == metadata
    assert read_candles("1m", settings=own, catalog=catalog)["open"].isna().all()


# Declarations (no Spark) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ('[{"exchange": "x", "zone": "America/NewYork"}]', "unknown time zone 'America/NewYork'"),
        ('[{"exchange": "x", "zone": "Mars/Olympus"}]', "use an IANA name"),
        (
            '[{"exchange": "x", "zone": "UTC", "session": "9:30-16"}]',
            "'9:30-16' of exchange x is not HH:MM-HH:MM",
        ),
        (
            '[{"exchange": "x", "zone": "UTC", "session": "16:00-09:30"}]',
            "closes at or before it opens",
        ),
        (
            '[{"exchange": "x", "zone": "UTC", "session": "09:15-16:00"}]',
            "09:15, which is not on a half hour",
        ),
        (
            '[{"exchange": "x", "zone": "UTC", "session": "09:30-16:00", "weekdays": "fri-mon"}]',
            "weekdays 'fri-mon'",
        ),
        ('[{"exchange": "x", "zone": "Australia/Lord_Howe"}]', "shifts its clock by less than 1h"),
        ('[{"symbol": "AAPL", "zone": "UTC"}]', "names no exchange"),
        ('[{"exchange": "x", "tz": "UTC"}]', "unknown key(s) ['tz']"),
        ("[{", "not valid JSON"),
        ("/nonexistent/calendars.json", "neither JSON nor a readable file"),
    ],
)
def test_a_bad_calendar_is_refused_naming_the_value(declared: str, message: str) -> None:
    with pytest.raises(CalendarError, match=_re(message)):
        parse_calendars(declared)
    with pytest.raises(ValueError, match=_re(message)):
        Settings(calendars=declared)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ("1d=previous_close", "not available for 1d"),
        ("1m=forward", "'forward' for 1m is unknown: use one of none, previous_close"),
        ("2m=none", "'2m=none' is not <timeframe>=<policy>"),
    ],
)
def test_a_bad_gap_policy_is_refused_naming_the_value(declared: str, message: str) -> None:
    with pytest.raises(CalendarError, match=_re(message)):
        parse_gap_policies(declared)


def test_calendars_come_from_a_file_and_the_most_specific_entry_wins(tmp_path: Path) -> None:
    path = tmp_path / "calendars.json"
    path.write_text(json.dumps(DECLARED))
    calendars = parse_calendars(str(path))
    assert calendars.of("us", "AAPL").session is not None
    assert calendars.of("us", "SPY").zone == NY and calendars.of("us", "SPY").session is None
    assert calendars.of("crypto", "BTC-USD").is_utc and not calendars.all_utc
    assert Calendars().all_utc and parse_calendars(None).all_utc


def test_the_planner_windows_equal_the_oracle_minute_by_minute() -> None:
    # core.calendars' plain-Python windows (used to plan and check) against the oracle's, for
    # every minute and some odd instants of each switch day, in every timeframe
    calendars = calendars_from(DECLARED)
    for (exchange, symbol), days in DAYS.items():
        calendar = calendars.of(exchange, symbol)
        for day in days:
            zone = local_of(exchange, symbol).zone
            t, end = midnight(day, zone), midnight(day + timedelta(days=1), zone)
            while t < end:
                for tf in ALL:
                    want = local_window(t, tf.width, local_of(exchange, symbol))
                    got = calendar.window(t, tf)
                    assert (
                        None if got is None else (_us(got[0].start), _us(got[0].end), got[1])
                    ) == want, (symbol, tf, t)
                t += timedelta(minutes=7, seconds=13)


def _us(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


def _re(text: str) -> str:
    import re

    return re.escape(text)
