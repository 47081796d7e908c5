"""Write-audit-publish: only validated candles reach main; a failed audit changes nothing."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.tables import Tables
from core.timeframes import TIMEFRAMES
from expectations.data_docs import build_data_docs
from expectations.docs_assets import external_urls
from expectations.validation import ValidationFailed
from flows import pipeline
from flows.pipeline import RunRequest
from settings import Settings
from spark_jobs import jobs, snapshots, wap
from tests.support.oracle import diff, expected_candles, stored_candles
from tests.support.trades import START, deliver, random_trades

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
ONE_MINUTE, FIVE_MINUTES = TIMEFRAMES["1m"], TIMEFRAMES["5m"]


def content(spark: SparkSession, table: str) -> list[Any]:
    return sorted(spark.read.table(table).collect(), key=lambda r: (r.symbol, r.window_start))


def test_good_run_publishes_validated_candles_to_main(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    rng = random.Random(41)
    now = START + timedelta(minutes=40)
    trades = random_trades(rng, START, now, 400, first_id=1)
    deliver(catalog, tables, trades, now=now)
    table = tables.candles(ONE_MINUTE)

    result = pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=now))

    assert result.published and result.main_before is None
    assert result.main_after == snapshots.main_snapshot_id(spark, table)
    assert result.validation.invariants is not None and result.validation.invariants.success
    assert not diff(expected_candles(trades, ONE_MINUTE), stored_candles(spark, table))
    assert snapshots.watermark(spark, table) == snapshots.main_snapshot_id(spark, tables.trades)
    # A rerun with nothing new publishes nothing and leaves main where it was
    again = pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=now))
    assert not again.published and again.main_after == result.main_after


def test_a_bad_candle_is_rejected_and_main_is_left_exactly_as_it_was(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    run_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(42)
    t1 = START + timedelta(minutes=30)
    first = random_trades(rng, START, t1, 300, first_id=1)
    deliver(catalog, tables, first, now=t1)
    table = tables.candles(ONE_MINUTE)
    pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=t1))
    snapshot, rows, mark = (
        snapshots.main_snapshot_id(spark, table),
        content(spark, table),
        snapshots.watermark(spark, table),
    )

    # Given: new trades, and a generate step that also corrupts one candle it wrote
    t2 = t1 + timedelta(minutes=5)
    deliver(catalog, tables, random_trades(rng, t1, t2, 100, first_id=5_000), now=t2)
    generate = pipeline.generate

    def corrupting_generate(*args: Any, **kwargs: Any) -> jobs.RunResult:
        run = generate(*args, **kwargs)
        spark.sql(
            f"UPDATE {table}.branch_{wap.AUDIT_BRANCH} SET low = high + 1 "
            "WHERE symbol = 'BTC-USD' AND window_start = (SELECT max(window_start) "
            f"FROM {table}.branch_{wap.AUDIT_BRANCH} WHERE symbol = 'BTC-USD')"
        )
        return run

    monkeypatch.setattr(pipeline, "generate", corrupting_generate)
    # When: the run validates the audit branch
    with pytest.raises(ValidationFailed) as failure:
        pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=t2))

    # Then: the error names the broken invariants and the offending row
    message = str(failure.value)
    assert "(high >= low)" in message and "(low <= open)" in message
    assert "BTC-USD" in message
    # main is exactly as it was: snapshot, content and watermark
    assert snapshots.main_snapshot_id(spark, table) == snapshot
    assert content(spark, table) == rows
    assert snapshots.watermark(spark, table) == mark
    # the rejected candles stay inspectable under a tag
    tags = spark.read.table(f"{table}.refs").where(F.col("type") == "TAG").collect()
    assert len(tags) == 1 and tags[0]["name"].startswith(wap.REJECTED_TAG_PREFIX)
    rejected = spark.read.option("versionAsOf", tags[0]["name"]).table(table)
    assert rejected.where(F.col("low") > F.col("high")).count() == 1
    # the failed run's own data docs page shows, offline, what was checked and the culprit
    page = failure.value.report.result_page
    assert page is not None and str(page) in message
    _assert_failed_page_shows_the_culprit(page, table)

    # When: the next, honest run comes, it recomputes the same trades and publishes them
    monkeypatch.setattr(pipeline, "generate", generate)
    result = pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=t2))
    assert result.published
    assert snapshots.watermark(spark, table) == snapshots.main_snapshot_id(spark, tables.trades)


def test_reconciliation_catches_a_candle_that_disagrees_with_the_rollup(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    rng = random.Random(43)
    now = START + timedelta(minutes=30)
    deliver(catalog, tables, random_trades(rng, START, now, 300, first_id=1), now=now)
    pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=now))
    five = pipeline.run_pipeline(spark, run_settings, FIVE_MINUTES, RunRequest(now=now))
    assert five.validation.reconciliation is not None
    assert five.validation.reconciliation.success
    assert five.validation.reconciliation_gating  # both reflect the same trades

    # Given: one published 1m candle tampered with, keeping 1m's watermark
    one = tables.candles(ONE_MINUTE)
    with snapshots.snapshot_properties(
        spark, {snapshots.WATERMARK_PROPERTY: str(snapshots.watermark(spark, one))}
    ):
        spark.sql(
            f"UPDATE {one} SET high = high + 1000000 WHERE symbol = 'ETH-USD' AND window_start = "
            f"(SELECT min(window_start) FROM {one} WHERE symbol = 'ETH-USD')"
        )
    # When: the 5m windows are validated again
    validation = pipeline.validate(spark, run_settings, FIVE_MINUTES, five.run)
    # Then: the invariants pass, reconciliation fails on exactly the high column and gates
    assert validation.invariants is not None and validation.invariants.success
    report = validation.reconciliation
    assert report is not None and not report.success
    assert {o.invariant for o in report.failures} == {"high equals the rollup of 1m candles"}
    assert "ETH-USD" in report.describe_failures()
    assert not validation.passed
    with pytest.raises(ValidationFailed, match="ohlcv_5m_reconciliation"):
        pipeline.require_valid(validation)


def _assert_failed_page_shows_the_culprit(page: Path, table: str) -> None:
    site = page.parents[4]  # validations/<suite>/<run name>/<run time>/<page>
    # the index, rebuilt once after the run's checkpoints, links the failed run's page
    assert quote(page.relative_to(site).as_posix()) in (site / "index.html").read_text()
    assert external_urls(site) == {}, "a data docs page still points outside the site"
    dom, screenshot = _open_in_chromium(page, "data-docs-failed-run.png", height=1400)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert f"Data asset: {table} (audit branch)" in text, "the asset is named after the table"
    summary = dom[dom.index('id="ohlcv-summary"') :]
    summary = summary[: summary.index("Values seen")]
    assert "FAILED" in summary and "high &gt;= low" in summary
    assert "symbol=BTC-USD" in summary, "the offending candle's key is on the page"
    # GX renders integer limits as floats; the page shows them as integers (trade_count >= 1)
    assert re.search(r'badge-secondary"\s*>1<', dom), "integer limits print as integers"
    assert not re.search(r'badge-secondary"\s*>-?\d+\.0<', dom), "a limit printed as a float"
    assert screenshot.stat().st_size > 10_000


def _open_in_chromium(page: Path, screenshot_name: str, height: int) -> tuple[str, Path]:
    """The page's DOM after its scripts ran in headless Chromium, and a screenshot of it."""
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / screenshot_name
    screenshot.unlink(missing_ok=True)
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*browser, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    subprocess.run(
        [*browser, f"--window-size=1400,{height}", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return dom, screenshot


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("no chromium: `make test` installs Debian's chromium package")


def test_data_docs_list_every_suite_and_latest_results_in_a_real_browser(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    rng = random.Random(44)
    now = START + timedelta(hours=2)
    deliver(catalog, tables, random_trades(rng, START, now, 500, first_id=1), now=now)
    for tf in TIMEFRAMES.values():
        pipeline.run_pipeline(spark, run_settings, tf, RunRequest(now=now))

    index = build_data_docs(run_settings.gx_root, run_settings.web_cache_dir)
    assert index.is_file()
    assert external_urls(index.parent) == {}, "a data docs page still points outside the site"
    dom, screenshot = _open_in_chromium(index, "data-docs-index.png", height=1800)

    suites = [
        *(f"ohlcv_{tf}_invariants" for tf in TIMEFRAMES),
        *(f"ohlcv_{tf}_reconciliation" for tf in ("5m", "30m", "1h", "1d")),
        *(f"ohlcv_{tf}_gaps" for tf in ("1m", "5m", "30m", "1h")),
    ]
    # The index holds every suite and result; its tables show them ten to a page (13 here).
    raw = index.read_text()
    for suite in suites:
        assert f"expectations/{suite}.html" in raw, f"suite {suite} not listed"
        results = re.findall(rf'validations/{suite}/[^"\\]+\.html', raw)
        assert results, f"no validation result of {suite} listed"
    # and the browser shows the first page: the newest results (the 1d run's) among them
    assert re.findall(r'href="validations/ohlcv_1d_invariants/[^"]+\.html"', dom)
    assert re.findall(r'href="expectations/ohlcv_[^"]+\.html"', dom)
    assert screenshot.stat().st_size > 10_000
