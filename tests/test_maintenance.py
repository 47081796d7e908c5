"""Months unattended: table maintenance, bounded metadata, bounded catch-up, durable watermarks.

Everything runs on the real Spark Connect server and real Iceberg tables; candles are always
compared with the independent oracle.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import LONG_LIFE_PROPERTIES, TRADES, Tables, ensure_tables
from core.timeframes import TIMEFRAMES, Timeframe
from flows import pipeline
from flows.backfill import run_backfill
from flows.pipeline import RunRequest
from settings import Settings
from spark_jobs import jobs, maintenance, snapshots
from spark_jobs.maintenance import MaintenancePolicy
from tests.support.oracle import Trade
from tests.support.trades import START, assert_matches_oracle, deliver, random_trades

ONE_MINUTE = TIMEFRAMES["1m"]
# Expire everything maintenance may expire: no age, keep one snapshot. Maintenance runs on the
# wall clock (snapshots carry real commit times); trades and candle runs on market time.
EAGER = MaintenancePolicy(snapshot_age=timedelta(0), retain_last=1)


def _metadata_locations(catalog: Catalog, namespace: str) -> dict[str, str]:
    return {
        name: catalog.load_table((namespace, name)).metadata_location
        for name in maintenance.all_tables()
        if name not in maintenance.OPTIONAL_TABLES
    }


def test_ensuring_existing_tables_writes_nothing_and_upgrades_old_properties(
    catalog: Catalog,
) -> None:
    namespace = f"t_{uuid.uuid4().hex[:12]}"
    ensure_tables(catalog, namespace)
    before = _metadata_locations(catalog, namespace)
    metadata_dir = Path(catalog.load_table((namespace, TRADES)).location().removeprefix("file:"))
    files_before = sorted((metadata_dir / "metadata").iterdir())

    # When: the tables are ensured again (every CLI call does this)
    ensure_tables(catalog, namespace)
    # Then: no table got a new metadata file, and none was left behind either
    assert _metadata_locations(catalog, namespace) == before
    assert sorted((metadata_dir / "metadata").iterdir()) == files_before

    # Given: a table made by an older version, without the long-life properties
    table = catalog.load_table((namespace, "ohlcv_5m"))
    with table.transaction() as tx:
        tx.remove_properties(*LONG_LIFE_PROPERTIES)
    old = _metadata_locations(catalog, namespace)
    # When: ensured; Then: exactly that table is upgraded, once
    ensure_tables(catalog, namespace)
    upgraded = _metadata_locations(catalog, namespace)
    assert {n for n in upgraded if upgraded[n] != old[n]} == {"ohlcv_5m"}
    properties = catalog.load_table((namespace, "ohlcv_5m")).properties
    assert all(properties[k] == v for k, v in LONG_LIFE_PROPERTIES.items())
    ensure_tables(catalog, namespace)
    assert _metadata_locations(catalog, namespace) == upgraded


def _late(rng: random.Random, n: int, first_id: int) -> list[Trade]:
    """Trades in the first half hour of START: far behind any lookback."""
    return random_trades(rng, START, START + timedelta(minutes=30), n, first_id=first_id)


def test_first_run_after_a_backfill_of_many_days_reads_only_the_late_trades(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    rng = random.Random(91)
    end = START + timedelta(days=4)
    trades: list[Trade] = []
    for day in range(4):  # four days, delivered day by day
        a = START + timedelta(days=day)
        batch = random_trades(rng, a, a + timedelta(days=1), 400, first_id=1 + day * 1000)
        deliver(catalog, tables, batch, now=end)
        trades += batch
    # Given: a backfill of every day, in day chunks, through the audited pipeline
    backfill = run_backfill(run_settings, ONE_MINUTE, START, end, spark=spark)
    chunks = [done.metrics for done in backfill]
    assert len(chunks) == 4 and all(c.published for c in chunks)
    last = chunks[-1].run
    assert last is not None and "covered every trade" in " ".join(last.notes)
    table = tables.candles(ONE_MINUTE)
    assert snapshots.watermark(spark, table) == snapshots.main_snapshot_id(spark, tables.trades)

    # When: 41 late trades arrive and the scheduled run comes
    late = _late(rng, 41, first_id=50_000)
    deliver(catalog, tables, late, now=end)
    result = pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=end))
    # Then: it reads the late trades' windows and the lookback, not the history
    run = result.run
    assert run.new_trades == 41 and run.late_trades == 41
    assert run.trades_read < 41 * 5, run.trades_read
    assert result.published
    assert_matches_oracle(spark, tables, trades + late, [ONE_MINUTE])

    # And: the next run, with nothing new, reads no new trade and commits nothing
    main = snapshots.main_snapshot_id(spark, table)
    again = pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=end))
    assert again.run.new_trades == 0 and not again.published
    assert snapshots.main_snapshot_id(spark, table) == main


def test_a_run_that_reads_new_trades_but_changes_nothing_advances_the_watermark(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    rng = random.Random(92)
    now = START + timedelta(hours=2)
    trades = random_trades(rng, START, now, 300, first_id=1)
    deliver(catalog, tables, trades, now=now)
    jobs.refresh_candles(spark, tables, ONE_MINUTE, now=now)
    table = tables.candles(ONE_MINUTE)
    # Given: late trades whose windows a backfill already recomputed (watermark unchanged)
    late = _late(rng, 20, first_id=10_000)
    deliver(catalog, tables, late, now=now)
    (chunk,) = [
        done.metrics.run
        for done in run_backfill(
            run_settings, ONE_MINUTE, START, now, chunk=timedelta(hours=2), spark=spark
        )
    ]
    assert chunk is not None and chunk.updated > 0
    current = snapshots.main_snapshot_id(spark, tables.trades)
    assert snapshots.watermark(spark, table) != current

    # When: the incremental run reads them and finds every candle already right
    result = jobs.refresh_candles(spark, tables, ONE_MINUTE, now=now)
    # Then: nothing is rewritten, but the watermark moves on in an empty commit
    assert result.new_trades == 20 and not result.written
    assert snapshots.watermark(spark, table) == current == result.watermark
    assert jobs.refresh_candles(spark, tables, ONE_MINUTE, now=now).new_trades == 0
    assert_matches_oracle(spark, tables, trades + late, [ONE_MINUTE])


def _until_caught_up(
    spark: SparkSession, tables: Tables, tf: Timeframe, budget: int, now: datetime
) -> list[jobs.RunResult]:
    runs = []
    while True:
        run = jobs.refresh_candles(spark, tables, tf, now=now, max_new_trades=budget)
        runs.append(run)
        if run.pending_trades == 0:
            return runs
        assert len(runs) < 50, "the catch-up does not progress"


def test_a_large_catch_up_proceeds_in_bounded_steps(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(93)
    now = START + timedelta(hours=6)
    trades = random_trades(rng, START, now, 1200, first_id=1)
    deliver(catalog, tables, trades, now=now)
    tf = TIMEFRAMES["5m"]

    runs = _until_caught_up(spark, tables, tf, 200, now=now)

    # Each run processed at most the budget (plus the one window that crosses it) ...
    per_window = max(n for _, n in _window_counts(trades, tf))
    assert all(r.new_trades <= 200 + per_window for r in runs)
    assert len(runs) >= 1200 // (200 + per_window)
    # ... the pending count went down run by run, and everything arrived exactly once
    pending = [r.pending_trades for r in runs]
    assert pending == sorted(pending, reverse=True) and pending[-1] == 0
    assert sum(r.new_trades for r in runs) == 1200
    assert snapshots.watermark(spark, tables.candles(tf)) == snapshots.main_snapshot_id(
        spark, tables.trades
    )
    assert_matches_oracle(spark, tables, trades, [tf])


def _window_counts(trades: list[Trade], tf: Timeframe) -> list[tuple[int, int]]:
    counts: dict[int, int] = {}
    for t in trades:
        w = t.ts_us - t.ts_us % tf.width_us
        counts[w] = counts.get(w, 0) + 1
    return sorted(counts.items())


def test_late_trades_still_land_after_compaction_and_expiry(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(94)
    trades: list[Trade] = []
    for hour in range(6):  # six appends: six small files in one day partition
        a = START + timedelta(hours=hour)
        batch = random_trades(rng, a, a + timedelta(hours=1), 80, first_id=1 + hour * 1000)
        deliver(catalog, tables, batch, now=a + timedelta(hours=1))
        trades += batch
        jobs.refresh_candles(spark, tables, ONE_MINUTE, now=a + timedelta(hours=1))
    table = tables.candles(ONE_MINUTE)
    watermark = snapshots.watermark(spark, table)
    # When: maintenance runs (on the wall clock: the trades' days are long sealed), keeping
    # nothing it does not have to
    later = START + timedelta(days=3)
    (done,) = maintenance.maintain(spark, tables, [TRADES], EAGER, datetime.now(UTC))
    # Then: small files were compacted and old snapshots expired, but not the watermark's
    assert done.files_compacted >= 6 and done.after.data_files < done.before.data_files
    assert done.snapshots_expired > 0
    assert snapshots.snapshot_exists(spark, tables.trades, watermark)  # type: ignore[arg-type]

    # When: late trades arrive after compaction and expiry, and every timeframe runs
    late = _late(rng, 30, first_id=90_000)
    deliver(catalog, tables, late, now=later)
    results = [jobs.refresh_candles(spark, tables, tf, now=later) for tf in TIMEFRAMES.values()]
    # Then: they landed in every timeframe
    assert results[0].new_trades == 30
    assert_matches_oracle(spark, tables, trades + late, list(TIMEFRAMES.values()))


def test_a_watermark_expired_by_someone_else_is_recovered_in_bounded_steps(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(95)
    now = START + timedelta(hours=3)
    first = random_trades(rng, START, now, 300, first_id=1)
    deliver(catalog, tables, first, now=now)
    jobs.refresh_candles(spark, tables, ONE_MINUTE, now=now)
    old = snapshots.watermark(spark, tables.candles(ONE_MINUTE))
    # Given: more trades (late ones too), and the watermark's snapshot expired by an operator
    # with PyIceberg, behind the pipeline's back
    more = random_trades(rng, START, now, 200, first_id=5_000)
    deliver(catalog, tables, more[:100], now=now)
    deliver(catalog, tables, more[100:], now=now)
    trades_table = catalog.load_table((tables.namespace, TRADES))
    trades_table.maintenance.expire_snapshots().by_id(old).commit()  # type: ignore[arg-type]
    assert not snapshots.snapshot_exists(spark, tables.trades, old)  # type: ignore[arg-type]

    # When: the runs come (with a small budget)
    runs = _until_caught_up(spark, tables, ONE_MINUTE, 150, now=now)
    # Then: the first says what happened and recomputes the history in bounded steps, and the
    # table ends exactly right
    assert "no longer exist" in " ".join(runs[0].notes)
    assert len(runs) > 1
    assert_matches_oracle(spark, tables, first + more, [ONE_MINUTE])
    assert snapshots.watermark(spark, tables.candles(ONE_MINUTE)) == snapshots.main_snapshot_id(
        spark, tables.trades
    )


def test_maintain_twice_is_a_no_op_the_second_time(
    spark: SparkSession, catalog: Catalog, tables: Tables
) -> None:
    rng = random.Random(96)
    trades: list[Trade] = []
    # Two hourly rounds (there were four: ten refreshes fewer) still give every table two
    # snapshots for the first pass to expire, and trades two small files in one day to compact.
    for hour in range(2):
        a = START + timedelta(hours=hour)
        batch = random_trades(rng, a, a + timedelta(hours=1), 60, first_id=1 + hour * 1000)
        deliver(catalog, tables, batch, now=a + timedelta(hours=1))
        trades += batch
        for tf in TIMEFRAMES.values():
            jobs.refresh_candles(spark, tables, tf, now=a + timedelta(hours=1))
    # Given: a file a failed write left behind, four days old
    data_dir = Path(catalog.load_table((tables.namespace, TRADES)).location().removeprefix("file:"))
    orphan = data_dir / "data" / "left-by-a-crashed-writer.parquet"
    orphan.write_bytes(b"not referenced by any snapshot")
    four_days_ago = time.time() - 4 * 86_400
    os.utime(orphan, (four_days_ago, four_days_ago))
    now = datetime.now(UTC)

    first = maintenance.maintain(spark, tables, maintenance.all_tables(), EAGER, now)
    assert any(r.changed for r in first)
    assert not orphan.exists()
    assert sum(r.orphans_removed for r in first) == 1
    second = maintenance.maintain(spark, tables, maintenance.all_tables(), EAGER, now)
    # Then: the second pass finds nothing to do and commits nothing
    assert [r.table for r in second if r.changed] == []
    assert [r.after for r in second] == [r.before for r in second]
    assert_matches_oracle(spark, tables, trades, list(TIMEFRAMES.values()))


class _MaintainDuringGenerate(pipeline.Steps):
    """Runs maintenance once, right after the flow's MERGE into the audit branch."""

    def __init__(self, tables: Tables, now: datetime) -> None:
        self.tables, self.now = tables, now
        self.done: list[maintenance.TableMaintenance] = []
        self.generated = 0

    def generate(
        self, spark: SparkSession, settings: Settings, tf: Timeframe, request: RunRequest
    ) -> jobs.RunResult:
        run = super().generate(spark, settings, tf, request)
        self.generated += 1
        if self.generated == 1:
            names = maintenance.all_tables()
            self.done = maintenance.maintain(spark, self.tables, names, EAGER, self.now)
        return run


def test_maintenance_during_a_flow_run_loses_neither_commit(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    rng = random.Random(97)
    trades: list[Trade] = []
    for i in range(4):  # runs every 15 minutes: several small files in one hour partition
        a = START + timedelta(minutes=15 * i)
        batch = random_trades(rng, a, a + timedelta(minutes=15), 40, first_id=1 + i * 1000)
        deliver(catalog, tables, batch, now=a + timedelta(minutes=15))
        trades += batch
        pipeline.run_pipeline(
            spark, run_settings, ONE_MINUTE, RunRequest(now=a + timedelta(minutes=15))
        )
    later = START + timedelta(days=3)
    late = _late(rng, 25, first_id=70_000)
    deliver(catalog, tables, late, now=later)
    steps = _MaintainDuringGenerate(tables, datetime.now(UTC))

    # When: maintenance expires and compacts (candle table included) between the flow's
    # write to the audit branch and its publish
    result = pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=later), steps)

    # Then: maintenance did its work ...
    assert sum(d.snapshots_expired for d in steps.done) > 0
    compacted = {d.table for d in steps.done if d.files_compacted}
    assert {TRADES, ONE_MINUTE.table} <= compacted
    # ... the flow noticed that main had been compacted, ran once more on top of it, and
    # published its candles and watermark
    assert steps.generated == 2
    assert result.published and result.run.new_trades == 25
    table = tables.candles(ONE_MINUTE)
    current = snapshots.main_snapshot_id(spark, tables.trades)
    assert snapshots.watermark(spark, table) == result.run.trades_snapshot_id == current
    assert_matches_oracle(spark, tables, trades + late, [ONE_MINUTE])
    # and the next run has nothing new to read
    after = pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=later))
    assert after.run.new_trades == 0 and not after.published


@pytest.mark.parametrize("age", [timedelta(hours=23), timedelta(0)])
def test_an_orphan_margin_under_a_day_is_refused(age: timedelta) -> None:
    with pytest.raises(ValueError, match="under 24 hours"):
        MaintenancePolicy(orphan_age=age)


def test_a_backfill_that_does_not_cover_every_trade_records_no_watermark(
    spark: SparkSession, catalog: Catalog, tables: Tables, run_settings: Settings
) -> None:
    rng = random.Random(98)
    end = START + timedelta(hours=4)
    trades = random_trades(rng, START, end, 300, first_id=1)
    deliver(catalog, tables, trades, now=end)
    # Given: a backfill of only the last two hours
    first = end - timedelta(hours=2)
    backfill = run_backfill(
        run_settings, ONE_MINUTE, first, end, chunk=timedelta(hours=1), spark=spark
    )
    (*_, last) = [done.metrics.run for done in backfill]
    # Then: it records no watermark (older trades are not reflected) and says why
    assert last is not None and "did not cover every trade" in " ".join(last.notes)
    assert snapshots.watermark(spark, tables.candles(ONE_MINUTE)) is None
    # and the next incremental run still picks up everything
    jobs.refresh_candles(spark, tables, ONE_MINUTE, now=end)
    assert_matches_oracle(spark, tables, trades, [ONE_MINUTE])


def test_ohlcv_maintain_runs_the_maintenance_flow_with_its_artifact(
    spark: SparkSession, catalog: Catalog, tables: Tables, flow_env: Settings
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from typer.testing import CliRunner

    from cli.main import app

    rng = random.Random(99)
    now = START + timedelta(hours=1)
    deliver(catalog, tables, random_trades(rng, START, now, 100, first_id=1), now=now)
    jobs.refresh_candles(spark, tables, ONE_MINUTE, now=now)

    result = CliRunner().invoke(
        app, ["maintain", "--table", "trades", "--table", "ohlcv_1m"], env={"COLUMNS": "250"}
    )

    assert result.exit_code == 0, result.output
    assert "trades" in result.output and "ohlcv_1m" in result.output
    assert "ohlcv_5m" not in result.output
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ohlcv-maintenance"])),
            limit=1,
        )
    assert "snapshots expired" in str(artifact.data)
    unknown = CliRunner().invoke(app, ["maintain", "--table", "nope"])
    assert unknown.exit_code == 2 and "unknown table(s) nope" in unknown.output  # usage error
