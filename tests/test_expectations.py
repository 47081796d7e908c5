"""Each OHLCV invariant fails on a crafted candle that breaks it, and passes on correct ones."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.catalog import Catalog
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.calendars import Calendars
from core.ranges import Range
from core.tables import CANDLE_KEY, Tables
from core.timeframes import TIMEFRAMES
from expectations import onepass, onescan
from expectations.frames import (
    gap_counts,
    gap_order,
    gap_rows,
    reconciliation_frame,
    trades_sample_frame,
    with_window_columns,
)
from expectations.report import ValidationReport
from expectations.suites import (
    NOT_NULL,
    RECONCILED,
    TRADE_TIMES,
    gap_suite,
    invariant_suite,
    reconciliation_suite,
    trades_sample_suite,
)
from expectations.validation import collect, run_checkpoint
from settings import Settings
from spark_jobs import jobs, snapshots
from spark_jobs.rollup import ChunkAggregate
from tests.support.spark_ui import queries_run
from tests.support.trades import START as TRADES_START
from tests.support.trades import deliver, random_trades

ONE_MINUTE = TIMEFRAMES["1m"]
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def good_candle(symbol: str, minute: int = 0) -> dict[str, Any]:
    start = START + timedelta(minutes=minute)
    return {
        "exchange": "test",
        "symbol": symbol,
        "window_start": start,
        "window_end": start + timedelta(minutes=1),
        "open": Decimal("10"),
        "high": Decimal("12"),
        "low": Decimal("8"),
        "close": Decimal("11"),
        "volume": Decimal("3"),
        "quote_volume": Decimal("30"),
        "trade_count": 3,
        "vwap": Decimal("10"),
        "open_ts": start + timedelta(seconds=5),
        "close_ts": start + timedelta(seconds=50),
        "computed_at": START,
        "trading_date": start.date(),
        "synthetic": False,
    }


def synthetic_candle(symbol: str, minute: int, close: str = "11") -> dict[str, Any]:
    """A gap-policy fill: flat at the previous close, no volume, no trades."""
    price = Decimal(close)
    return {
        **good_candle(symbol, minute),
        **dict.fromkeys(("open", "high", "low", "close", "vwap"), price),
        "volume": Decimal(0),
        "quote_volume": Decimal(0),
        "trade_count": 0,
        "open_ts": None,
        "close_ts": None,
        "synthetic": True,
    }


def frame(spark: SparkSession, tables: Tables, rows: list[dict[str, Any]]) -> DataFrame:
    schema = spark.read.table(tables.candles(ONE_MINUTE)).schema
    columns = [f.name for f in schema.fields]
    df = spark.createDataFrame([tuple(r[c] for c in columns) for r in rows], schema)
    return with_window_columns(df, ONE_MINUTE)


def _set(**changes: Any) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    return lambda row: [{**row, **changes}]


def _shift(**deltas: timedelta) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    return lambda row: [{**row, **{k: row[k] + d for k, d in deltas.items()}}]


S = timedelta(seconds=1)
# invariant -> (how to break one candle, the invariants that then fail). Each breaks only its
# own invariant, except high >= low: it follows from low <= open <= high, so no candle can
# break it without also breaking low <= open, low <= close and low <= vwap.
CASES: dict[str, tuple[Callable[[dict[str, Any]], list[dict[str, Any]]], set[str]]] = {
    **{
        f"{c} is not null": (_set(**{c: None}), {f"{c} is not null"})
        for c in (*NOT_NULL, *TRADE_TIMES)
    },
    "high >= open": (_set(open=Decimal("12.5")), {"high >= open"}),
    "high >= close": (_set(close=Decimal("12.5")), {"high >= close"}),
    "high >= low": (
        _set(low=Decimal("12.5")),
        {"high >= low", "low <= open", "low <= close", "low <= vwap"},
    ),
    "low <= open": (_set(open=Decimal("7.5")), {"low <= open"}),
    "low <= close": (_set(close=Decimal("7.5")), {"low <= close"}),
    "low <= vwap": (_set(vwap=Decimal("7.5")), {"low <= vwap"}),
    "vwap <= high": (_set(vwap=Decimal("12.5")), {"vwap <= high"}),
    "volume > 0": (_set(volume=Decimal("0")), {"volume > 0"}),
    "quote_volume > 0": (_set(quote_volume=Decimal("0")), {"quote_volume > 0"}),
    "trade_count >= 1": (_set(trade_count=0), {"trade_count >= 1"}),
    "key is unique": (
        lambda row: [row, {**row, "close": Decimal("9")}],
        {"(exchange, symbol, window_start) is unique"},
    ),
    "window is one timeframe": (
        _shift(window_end=timedelta(minutes=1)),
        {"window_end - window_start = 1m"},
    ),
    "window is aligned": (
        _shift(window_start=30 * S, window_end=30 * S, open_ts=30 * S, close_ts=5 * S),
        {"window_start is aligned to 1m"},
    ),
    "window_start <= open_ts": (
        _shift(open_ts=-10 * S),
        {"window_start <= open_ts"},
    ),
    "open_ts <= close_ts": (
        _set(close_ts=START + 2 * S),
        {"open_ts <= close_ts"},
    ),
    "close_ts < window_end": (
        _set(close_ts=START + timedelta(minutes=1)),
        {"close_ts < window_end"},
    ),
    "trading_date is local": (
        _set(trading_date=START.date() + timedelta(days=1)),
        {"trading_date is the window's local date"},
    ),
    # A synthetic candle is checked by its own rule, and only by it: with volume 0, no trades
    # and no trade times it passes every real-candle rule.
    "synthetic is flat": (
        lambda row: [{**synthetic_candle("BTC-USD", 0), "high": Decimal("12")}],
        {"a synthetic candle is flat at the previous close, with no volume and no trades"},
    ),
    "synthetic has no trades": (
        lambda row: [{**synthetic_candle("BTC-USD", 0), "trade_count": 1}],
        {"a synthetic candle is flat at the previous close, with no volume and no trades"},
    ),
    "a real candle without trades": (
        _set(synthetic=True),  # marked synthetic, but it has prices, volume and trade times
        {"a synthetic candle is flat at the previous close, with no volume and no trades"},
    ),
}


def failed(report: ValidationReport) -> set[str]:
    return {o.invariant for o in report.failures}


def validate(df: DataFrame, root: Path, engine: str) -> ValidationReport:
    return run_checkpoint(
        root,
        "ohlcv_1m_invariants",
        invariant_suite(ONE_MINUTE),
        df,
        web_cache=Settings.model_fields["web_cache_dir"].default,
        engine=engine,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_invariant_fails_on_a_candle_that_breaks_it(
    spark: SparkSession, tables: Tables, tmp_path: Path, case: str
) -> None:
    # Given: two correct candles and one crafted to break the invariant
    breaker, expected = CASES[case]
    rows = [good_candle("ETH-USD"), good_candle("SOL-USD", 1), *breaker(good_candle("BTC-USD"))]
    # When: the 1m suite validates them
    report = validate(frame(spark, tables, rows), tmp_path, "pandas")
    # Then: exactly the expected invariants fail, and the report names them
    assert not report.success
    assert failed(report) == expected
    assert report.evaluated == len(invariant_suite(ONE_MINUTE).expectations)


@pytest.mark.parametrize("engine", ["pandas", "spark", "onepass"])
def test_correct_candles_pass_and_failures_name_rows_on_every_engine(
    spark: SparkSession, tables: Tables, tmp_path: Path, engine: str
) -> None:
    good = [good_candle(s, m) for s in ("BTC-USD", "ETH-USD") for m in range(3)]
    good.append(synthetic_candle("ETH-USD", 3))
    report = validate(frame(spark, tables, good), tmp_path, engine)
    assert report.success, report.describe_failures()
    assert report.engine == engine

    bad = [*good, {**good_candle("SOL-USD"), "high": Decimal("7")}]
    report = validate(frame(spark, tables, bad), tmp_path, engine)
    assert not report.success
    message = report.describe_failures()
    # Then: the message names the failed expectation, its invariant and the offending row
    assert "expect_column_pair_values_a_to_be_greater_than_b (high >= low)" in message
    assert "SOL-USD" in message
    # and the data docs page of this very validation
    assert report.result_page is not None and report.result_page.is_file()
    assert str(report.result_page) in message


def test_validation_results_are_kept_newest_first_up_to_the_limit(
    spark: SparkSession, tables: Tables, tmp_path: Path
) -> None:
    good = frame(spark, tables, [good_candle("BTC-USD", m) for m in range(2)])
    suite = invariant_suite(ONE_MINUTE)
    site = tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site"
    suite_page = site / "expectations" / f"{suite.name}.html"
    rendered: set[int] = set()
    for n in range(4):  # four scheduled runs
        report = run_checkpoint(
            tmp_path,
            suite.name,
            suite,
            good,
            web_cache=Settings.model_fields["web_cache_dir"].default,
            engine="pandas",
            run_name=f"run {n}",
            keep_results=2,
        )
        assert report.success
        rendered.add(suite_page.stat().st_mtime_ns)
    # The unchanged suite's page was rendered once, not on every run
    assert len(rendered) == 1
    gx_dir = tmp_path / "gx" / "uncommitted"
    stored = sorted(p.parent.parent.name for p in gx_dir.glob(f"validations/{suite.name}/*/*/*"))
    pages = sorted(
        p.parent.parent.name
        for p in gx_dir.glob(f"data_docs/local_site/validations/{suite.name}/*/*/*.html")
    )
    assert stored == pages == ["run 2", "run 3"]
    index = (gx_dir / "data_docs" / "local_site" / "index.html").read_text()
    assert "run 3" in index and "run 0" not in index


def _outcomes(report: ValidationReport) -> list[tuple[str, bool, int, list[str]]]:
    """Each expectation's verdict, unexpected count and the symbols of its sample rows."""
    return sorted(
        (
            o.invariant,
            o.success,
            o.unexpected_count,
            sorted(set(re.findall(r"symbol=([\w-]+)", str(o.examples)))),
        )
        for o in report.outcomes
    )


def test_onepass_counts_every_broken_invariant_exactly_as_gx_does(
    spark: SparkSession, tables: Tables, tmp_path: Path
) -> None:
    # Given: one frame holding every crafted breakage, each case under a symbol of its own,
    # beside correct and synthetic candles
    rows = [good_candle(s, m) for s in ("BTC-USD", "ETH-USD") for m in range(3)]
    rows.append(synthetic_candle("ETH-USD", 3))
    for i, case in enumerate(sorted(CASES)):
        breaker, _ = CASES[case]
        broken = breaker(good_candle("BTC-USD"))
        rows += [{**r, "symbol": r["symbol"] and f"case-{i}"} for r in broken]
    df = frame(spark, tables, rows)
    # When: GX's pandas engine and the one-pass evaluation validate it
    gx_report = validate(df, tmp_path / "gx_engine", "pandas")
    onepass = validate(df, tmp_path / "onepass", "onepass")
    # Then: the same expectations fail, on the same number of rows, with samples from the
    # same candles; the report and its data docs page say which engine ran
    assert onepass.engine == "onepass"
    assert _outcomes(onepass) == _outcomes(gx_report)
    assert {o.invariant for o in onepass.failures} == set().union(*(e for _, e in CASES.values()))
    assert onepass.rows == gx_report.rows == len(rows)
    assert onepass.ranges == gx_report.ranges
    assert onepass.result_page is not None and "case-" in onepass.result_page.read_text()


def test_onepass_reconciles_and_reports_gaps_exactly_as_gx_does(
    spark: SparkSession, tables: Tables, tmp_path: Path
) -> None:
    # Given: 5m candles beside their rollup, with a window missing on either side, a differing
    # close, a missing rollup value (skipped by the pair check) and a differing volume
    five = TIMEFRAMES["5m"]
    suite = reconciliation_suite(five)
    assert suite is not None
    candles = frame(spark, tables, [good_candle(s, 0) for s in ("A", "B", "C", "D", "E", "F")])
    rolled = candles.select(
        "*",
        *[F.col(c).alias(f"rollup_{c}") for c in RECONCILED],
        F.lit(True).alias("in_candles"),
        F.lit(True).alias("in_rollup"),
    ).withColumns(
        {
            "in_rollup": F.col("symbol") != "A",
            "in_candles": F.col("symbol") != "B",
            "rollup_close": F.when(F.col("symbol") == "C", F.lit(1)).otherwise(F.col("close")),
            "rollup_high": F.when(F.col("symbol") != "D", F.col("high")),
            "rollup_volume": F.when(F.col("symbol") == "E", F.lit(2)).otherwise(F.col("volume")),
        }
    )
    gaps = spark.createDataFrame(
        [("x", s, n) for s, n in (("A", 0), ("B", 3), ("C", 0))],
        "exchange string, symbol string, empty_windows long",
    )
    for s, df in ((suite, rolled), (gap_suite(ONE_MINUTE), gaps)):
        # When: both engines validate
        reports = [
            run_checkpoint(
                tmp_path / engine,
                s.name,
                s,
                df,
                web_cache=Settings.model_fields["web_cache_dir"].default,
                engine=engine,  # type: ignore[arg-type]
            )
            for engine in ("pandas", "onepass")
        ]
        # Then: the same verdicts, counts and sample candles
        assert _outcomes(reports[1]) == _outcomes(reports[0])
        assert not reports[1].success


def test_the_gap_report_of_collected_candles_equals_the_one_spark_computes(
    spark: SparkSession, tables: Tables
) -> None:
    # Given: candles with windows missing (A: minutes 2-4), synthetic fills (C: 1 and 2), one
    # row written before the synthetic column existed (null: real), a second trading date, and
    # a symbol with one candle
    next_day = 24 * 60
    rows = [
        *(good_candle("A", m) for m in (0, 1, 5)),
        good_candle("B", 0),
        good_candle("C", 0),
        synthetic_candle("C", 1),
        synthetic_candle("C", 2),
        {**good_candle("C", 3), "synthetic": None},
        *(good_candle("A", next_day + m) for m in (0, 3)),
        {**good_candle("D", 0), "trading_date": None},  # (null: the suite's finding, not a crash)
    ]
    candles = frame(spark, tables, rows)
    # When: the report is computed in Spark, and from the same candles collected
    in_spark = [r.asDict() for r in gap_counts(candles, ONE_MINUTE).collect()]
    collected = gap_rows(collect(candles), ONE_MINUTE)
    # Then: the same rows, with the same Python types
    assert collected is not None
    assert sorted(in_spark, key=gap_order) == sorted(collected, key=gap_order)
    assert [(r["symbol"], r["windows"], r["empty_windows"]) for r in collected] == [
        ("A", 6, 3),
        ("A", 4, 2),
        ("B", 1, 0),
        ("C", 4, 2),
        ("D", 1, 0),
    ]
    assert collected[-1]["trading_date"] is None
    assert all(type(r["windows"]) is int and type(r["empty_windows"]) is int for r in collected)
    assert gap_rows(collect(candles), TIMEFRAMES["1d"]) is None  # daily: no gap report


def _verdicts(evaluated: Any) -> tuple[int, list[tuple[Any, ...]], Any]:
    """Rows, each expectation's verdict and counts (with its samples' keys), ranges seen."""
    rows, results, ranges = evaluated
    verdicts = [
        (
            r.expectation_config.type,
            r.expectation_config.kwargs.get("column", r.expectation_config.kwargs.get("column_A")),
            r.success,
            r.result["element_count"],
            r.result["unexpected_count"],
            r.result.get("missing_count"),
            sorted(str(s) for s in r.result["partial_unexpected_index_list"]),
        )
        for r in results
    ]
    return rows, verdicts, ranges


def _tampered_five_minute_run(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> tuple[Range, DataFrame, int]:
    """A day of trades with 1m candles on main, and 5m candles broken in every way a check
    sees: a changed high, a missing window, a misaligned window, a duplicated synthetic one."""
    five = TIMEFRAMES["5m"]
    end = TRADES_START + timedelta(hours=5)
    day = Range(TRADES_START, end)
    deliver(catalog, tables, random_trades(random.Random(7), TRADES_START, end, 600, 1), now=end)
    for tf in (ONE_MINUTE, five):
        jobs.recompute(spark, tables, tf, day)
    stored = spark.read.table(tables.candles(five))
    first = stored.agg(F.min("window_start")).first()
    assert first is not None
    at, btc = F.col("window_start") == F.lit(first[0]), F.col("symbol") == "BTC-USD"
    eth, sol = F.col("symbol") == "ETH-USD", F.col("symbol") == "SOL-USD"
    late = F.col("window_start") + F.expr("INTERVAL 30 SECONDS")
    hour_before = TRADES_START - timedelta(hours=1)
    filler = {
        **synthetic_candle("SOL-USD", 0),
        "window_start": hour_before,
        "window_end": hour_before + timedelta(minutes=5),
        "trading_date": hour_before.date(),
    }
    columns = [f.name for f in stored.schema.fields]
    synthetic = spark.createDataFrame([tuple(filler[c] for c in columns)] * 2, stored.schema)
    broken = (
        stored.withColumn("high", F.when(at & btc, F.col("high") + 1).otherwise(F.col("high")))
        .where(~(at & eth))
        .withColumn("window_start", F.when(at & sol, late).otherwise(F.col("window_start")))
        .unionByName(synthetic)
    )
    return day, broken, snapshots.main_snapshot_id(spark, tables.trades) or 0


def test_one_scan_counts_every_suite_exactly_as_its_own_evaluation_does(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    # Given: a 5m run's candles broken in every way invariants, reconciliation, the trades
    # sample and the gap report see, and the chunk's trades sample (every window)
    five = TIMEFRAMES["5m"]
    day, broken, snapshot = _tampered_five_minute_run(spark, catalog, tables)
    with ChunkAggregate(spark, tables, day, snapshot, [five], Calendars()) as chunk:
        sample = chunk.trades_sample(1_000_000, 10**12)
        assert sample is not None
        # When: one scan evaluates them all
        scanned = onescan.scan(spark, tables, five, [day], broken, None, sample)
        # Then: every suite's verdicts, counts and sample rows equal those of the suite
        # evaluated on its own frame (whose counts equal GX's: the tests above)
        assert scanned is not None
        suites = {
            "invariants": (invariant_suite(five), with_window_columns(broken, five)),
            "reconciliation": (
                reconciliation_suite(five),
                reconciliation_frame(spark, tables, five, [day], None, written=broken),
            ),
            "trades_sample": (trades_sample_suite(five), trades_sample_frame(five, broken, sample)),
        }
        for name, (suite, frame) in suites.items():
            assert suite is not None and frame is not None
            ranges = onepass.range_columns(suite.expectations, frame.columns)
            alone = onepass.evaluate(frame, suite.expectations, CANDLE_KEY, 5, ranges)
            assert _verdicts(getattr(scanned, name)) == _verdicts(alone), name
            failing = {v[1] for v in _verdicts(alone)[1] if not v[2]}
            assert failing, f"{name}: the frame breaks nothing"
    # and the gap report's rows equal gap_counts' own
    want = [r.asDict() for r in gap_counts(broken, five).collect()]
    assert scanned.gap_rows is not None
    assert sorted(scanned.gap_rows, key=gap_order) == sorted(want, key=gap_order)


def test_the_checks_of_a_run_that_passes_are_one_spark_query(
    spark: SparkSession, catalog: Catalog, tables: Tables, settings: Settings
) -> None:
    # Given: correct 5m candles, beside the 1m candles they roll up
    five = TIMEFRAMES["5m"]
    day, _, snapshot = _tampered_five_minute_run(spark, catalog, tables)
    stored = spark.read.table(tables.candles(five))
    scanned: list[onescan.Scanned | None] = []
    with ChunkAggregate(spark, tables, day, snapshot, [five], Calendars()) as chunk:
        sample = chunk.trades_sample(4, 10**12)
        # When: invariants, uniqueness, reconciliation, the trades sample and the gap report
        # are checked
        queries = queries_run(
            settings.ui_port,
            lambda: scanned.append(onescan.scan(spark, tables, five, [day], stored, None, sample)),
        )
    # Then: all passed, in one Spark query
    found = scanned[0]
    assert found is not None and found.reconciliation and found.trades_sample
    for _, results, _ in (found.invariants, found.reconciliation, found.trades_sample):
        assert all(r.success for r in results)
    assert found.gap_rows
    assert queries == 1
