"""The Prefect flows end to end, under prefect_test_harness, on the real Spark Connect server."""

from __future__ import annotations

import json
import random
import re
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.states import State
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from typer.testing import CliRunner

from cli.main import app
from core.tables import Tables, ensure_tables
from core.timeframes import TIMEFRAMES
from flows import candle_flows, pipeline
from flows import maintenance as maintenance_flow
from flows.candle_flows import FLOWS, deployments
from flows.results import RunMetrics
from settings import Settings
from spark_jobs import jobs, snapshots, wap
from tests.support.oracle import EPOCH, diff, expected_candles, stored_candles
from tests.support.trades import START, deliver, random_trades

ONE_MINUTE = TIMEFRAMES["1m"]


def test_every_flow_publishes_candles_equal_to_the_oracle_with_artifacts(
    spark: SparkSession, catalog: Catalog, tables: Tables, flow_env: Settings
) -> None:
    rng = random.Random(51)
    now = START + timedelta(hours=3)
    trades = random_trades(rng, START, now, 900, first_id=1)
    deliver(catalog, tables, trades, now=now)

    for name in TIMEFRAMES:
        metrics = FLOWS[name](at=now)
        assert metrics.published, name
        assert metrics.expectations_passed == metrics.expectations_evaluated > 0

    for tf in TIMEFRAMES.values():
        problems = diff(expected_candles(trades, tf), stored_candles(spark, tables.candles(tf)))
        assert not problems, f"{tf}: {problems[:5]}"
    with get_client(sync_client=True) as client:
        keys = ["ohlcv-1d-metrics", "ohlcv-1d-validation", "ohlcv-1m-gaps"]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
    # the newest of each key: other tests of the session may have run flows before
    by_key = {a.key: a for a in sorted(artifacts, key=lambda a: str(a.created))}
    assert set(by_key) == set(keys)
    # The gap report: per symbol and day, the 1m windows between the first and the last
    # trade that had none (3 symbols share 900 trades over 3 hours: many minutes are empty)
    starts: dict[tuple[str, str], list[int]] = {}
    for _, symbol, start in expected_candles(trades, ONE_MINUTE):
        day = (EPOCH + timedelta(microseconds=start)).date().isoformat()
        starts.setdefault((symbol, day), []).append(start)
    want = {k: str((max(v) - min(v)) // 60_000_000 + 1 - len(v)) for k, v in starts.items()}
    gaps = json.loads(str(by_key["ohlcv-1m-gaps"].data))
    assert {(r["symbol"], r["trading_date"]): r["empty_windows"] for r in gaps} == want
    assert sum(int(v) for v in want.values()) > 0
    metrics_rows = {row["metric"]: row["value"] for row in json.loads(str(by_key[keys[0]].data))}
    assert metrics_rows["windows_recomputed"] != "0" and "generate_candles_s" in metrics_rows
    assert "ohlcv_1d_invariants" in str(by_key[keys[1]].data)
    # the artifact links this run's own data docs page, and the index of all validations
    assert re.search(r"\[its data docs page\]\(file:///[^)]+\.html\)", str(by_key[keys[1]].data))
    assert "[data docs index](file:///" in str(by_key[keys[1]].data)
    # The Connect token never reaches Prefect: not in artifacts, not in the run logs
    token = flow_env.local_token()
    assert token
    assert all(token not in str(a.data) for a in artifacts)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(limit=200)
    assert logs and all(token not in log.message for log in logs)


def test_generate_is_retried_and_a_step_that_keeps_failing_leaves_main_unchanged(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    flow_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(52)
    now = START + timedelta(minutes=30)
    trades = random_trades(rng, START, now, 300, first_id=1)
    deliver(catalog, tables, trades, now=now)
    generate = pipeline.generate
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> jobs.RunResult:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError(f"transient failure {calls['n']}")
        return generate(*args, **kwargs)

    # Given: a generate step that fails twice; When: the flow runs; Then: the third try publishes
    monkeypatch.setattr(pipeline, "generate", flaky)
    metrics = FLOWS["1m"](at=now)
    assert calls["n"] == 3 and metrics.published
    table = tables.candles(ONE_MINUTE)
    assert not diff(expected_candles(trades, ONE_MINUTE), stored_candles(spark, table))

    # Given: new trades and a generate step that always fails after writing to the branch
    later = now + timedelta(minutes=5)
    deliver(catalog, tables, random_trades(rng, now, later, 50, first_id=9_000), now=later)
    before = (snapshots.main_snapshot_id(spark, table), snapshots.watermark(spark, table))
    calls["n"] = 0

    def broken(*args: Any, **kwargs: Any) -> jobs.RunResult:
        calls["n"] += 1
        generate(*args, **kwargs)
        raise ConnectionError("lost the server after writing")

    monkeypatch.setattr(pipeline, "generate", broken)
    state = cast(State[Any], FLOWS["1m"](at=later, return_state=True))
    # Then: Failed after 3 tries, and main (snapshot and watermark) is where it was
    assert state.is_failed()
    assert calls["n"] == 3
    assert (snapshots.main_snapshot_id(spark, table), snapshots.watermark(spark, table)) == before


def _running_jobs(ui_port: int) -> list[Any]:
    base = f"http://127.0.0.1:{ui_port}/api/v1/applications"
    with urllib.request.urlopen(base, timeout=10) as response:
        app_id = json.load(response)[0]["id"]
    with urllib.request.urlopen(f"{base}/{app_id}/jobs?status=running", timeout=10) as response:
        return list(json.load(response))


def test_a_timed_out_generate_is_interrupted_on_the_server(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    flow_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(53)
    now = START + timedelta(minutes=20)
    deliver(catalog, tables, random_trades(rng, START, now, 200, first_id=1), now=now)
    FLOWS["1m"](at=now)
    table = tables.candles(ONE_MINUTE)
    snapshots_before = spark.read.table(f"{table}.snapshots").count()
    monkeypatch.setenv("OHLCV_GENERATE_TIMEOUT_S", "5")
    monkeypatch.setenv("OHLCV_GENERATE_RETRIES", "0")
    started = threading.Event()

    def slow(spark_: SparkSession, settings: Settings, *args: Any, **kwargs: Any) -> Any:
        # A write that takes minutes: it would commit a snapshot if it were not interrupted.
        wap.start_audit(spark_, table)
        started.set()
        spark_.sql(
            f"INSERT INTO {table}.branch_{wap.AUDIT_BRANCH} "
            f"SELECT t.* FROM {table} t CROSS JOIN (SELECT max(id) AS m FROM range(200000000000)) "
            "WHERE m >= 0"
        )
        raise AssertionError("the slow write finished instead of being interrupted")

    monkeypatch.setattr(pipeline, "generate", slow)
    clock = time.monotonic()
    state = cast(State[Any], FLOWS["1m"](at=now, return_state=True))
    elapsed = time.monotonic() - clock

    assert started.is_set()
    assert state.is_failed() and elapsed < 60
    assert "interrupted the server-side operations tagged ohlcv-" in str(
        state.result(raise_on_failure=False)
    )
    deadline = time.monotonic() + 30
    while _running_jobs(flow_env.ui_port) and time.monotonic() < deadline:
        time.sleep(1)
    assert _running_jobs(flow_env.ui_port) == []
    time.sleep(5)  # a MERGE that survived would commit about now or never
    assert spark.read.table(f"{table}.snapshots").count() == snapshots_before


def _minutes(cron: str) -> set[tuple[int, int]]:
    """(hour, minute) pairs a 5-field cron fires at in one day (the forms used here)."""

    def expand(field: str, size: int) -> set[int]:
        out: set[int] = set()
        for part in field.split(","):
            step = 1
            if "/" in part:
                part, step_text = part.split("/")
                step = int(step_text)
            if part == "*":
                lo, hi = 0, size - 1
            elif "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
            else:
                lo = hi = int(part)
            out.update(range(lo, hi + 1, step))
        return out

    minute, hour, *_ = cron.split()
    return {(h, m) for h in expand(hour, 24) for m in expand(minute, 60)}


def _gaps_minutes(cron: str) -> list[int]:
    """Minutes between consecutive firings of a cron over a day, wrapping around midnight."""
    fired = sorted(h * 60 + m for h, m in _minutes(cron))
    return [(b - a) % 1440 or 1440 for a, b in zip(fired, fired[1:] + fired[:1], strict=True)]


def test_served_deployments_never_overlap_never_miss_a_window_and_allow_one_writer() -> None:
    built = {d.name: d for d in deployments()}
    # the daily maintenance starts in a minute of its own too
    fired: dict[tuple[int, int], str] = dict.fromkeys(_minutes(maintenance_flow.CRON), "maint")
    assert len(fired) == 1 and maintenance_flow.maintenance_deployment().concurrency_limit == 1
    for tf in TIMEFRAMES.values():
        deployment = built[f"ohlcv-{tf}"]
        # one writer per candle table: a second run waits for the first
        assert deployment.concurrency_limit == 1
        assert deployment.concurrency_options is not None
        assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert deployment.parameters == {}  # a scheduled run uses the clock and the defaults
        (schedule,) = deployment.schedules
        assert schedule.schedule.timezone == "UTC"
        # runs come at least once per lookback, so every closed window is recomputed in time
        assert max(_gaps_minutes(schedule.schedule.cron)) <= tf.lookback / timedelta(minutes=1)
        for minute in _minutes(schedule.schedule.cron):  # staggered: no shared start minute
            assert minute not in fired, f"{tf} and {fired[minute]} share {minute}"
            fired[minute] = tf.name
        # the entrypoint a worker loads resolves to this very flow
        module, attribute = deployment.entrypoint.split(":")
        assert module.endswith("candle_flows.py") or module.endswith("flows.candle_flows")
        assert getattr(candle_flows, attribute) is FLOWS[tf.name]


def test_cli_run_backfill_with_resume_and_status(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    flow_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(54)
    now = START + timedelta(hours=3)
    trades = random_trades(rng, START, now, 600, first_id=1)
    deliver(catalog, tables, trades, now=now)
    runner = CliRunner()

    result = runner.invoke(app, ["run", "1m", "--at", now.isoformat(), "--lookback", "15m"])
    assert result.exit_code == 0, result.output
    assert "1m: read" in result.output and "published snapshot" in result.output

    # Given: a backfill of three 1h chunks whose second chunk is interrupted
    five = FLOWS["5m"]
    chunks = {"n": 0}

    def interrupted(**kwargs: Any) -> Any:
        chunks["n"] += 1
        if chunks["n"] == 2:
            raise RuntimeError("the machine went away")
        return five(**kwargs)

    monkeypatch.setitem(FLOWS, "5m", interrupted)
    args = ["backfill", "5m", "--start", START.isoformat(), "--end", now.isoformat()]
    result = runner.invoke(app, [*args, "--chunk", "1h"])
    assert result.exit_code != 0
    # When: the same command runs again
    monkeypatch.setitem(FLOWS, "5m", five)
    result = runner.invoke(app, [*args, "--chunk", "1h"])
    # Then: it resumes after the finished chunk and the table equals the oracle
    assert result.exit_code == 0, result.output
    assert "resuming: 1 of 3 chunks already done" in result.output
    five_minutes = TIMEFRAMES["5m"]
    stored = stored_candles(spark, tables.candles(five_minutes))
    assert not diff(expected_candles(trades, five_minutes), stored)

    # And: with runs scheduled ahead (as `ohlcv serve` creates them), status still shows the
    # last finished run of each timeframe, and the next one
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    upcoming = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(TIMEFRAMES["1m"].flow_name)
        deployment = client.create_deployment(flow_id=flow_id, name="status-test")
        client.create_flow_run_from_deployment(deployment, state=Scheduled(scheduled_time=upcoming))
    result = runner.invoke(app, ["status"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    newest = spark.read.table(tables.candles(five_minutes)).agg(F.max("window_start")).first()
    assert newest is not None
    assert f"{newest[0]:%Y-%m-%d %H:%M}" in result.output
    one_minute = next(line for line in result.output.splitlines() if line.startswith("│ 1m"))
    assert "Completed" in one_minute and f"{upcoming:%Y-%m-%d %H:%M:%S}" in one_minute


def test_after_an_outage_one_catch_up_run_covers_the_backlog(
    spark: SparkSession, catalog: Catalog, tables: Tables, flow_env: Settings
) -> None:
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    rng = random.Random(55)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    now = start + timedelta(minutes=29)
    trades = random_trades(rng, start, now, 300, first_id=1)
    deliver(catalog, tables, trades, now=now)
    (deployment,) = [d for d in deployments() if d.name == "ohlcv-1m"]
    deployment_id = deployment.apply()
    # Given: three scheduled runs of the 1m deployment that fell due while nothing ran
    with get_client(sync_client=True) as client:
        backlog = [
            client.create_flow_run_from_deployment(
                deployment_id, state=Scheduled(scheduled_time=now - timedelta(minutes=m))
            )
            for m in (15, 10, 5)
        ]
    # When: the runner gets to them, oldest first
    results = [
        cast(RunMetrics, run_flow(FLOWS["1m"], flow_run=run, parameters={})) for run in backlog
    ]
    # Then: the two older ones skip, and the newest one alone publishes everything
    assert [r.skipped is not None for r in results] == [True, True, False], results
    assert results[2].published
    table = tables.candles(ONE_MINUTE)
    assert not diff(expected_candles(trades, ONE_MINUTE), stored_candles(spark, table))


def test_backfill_progress_belongs_to_its_table_and_is_checked_against_it(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    flow_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(56)
    end = START + timedelta(hours=2)
    trades = random_trades(rng, START, end, 300, first_id=1)
    deliver(catalog, tables, trades, now=end)
    five = TIMEFRAMES["5m"]
    args = ["backfill", "5m", "--start", START.isoformat(), "--end", end.isoformat()]
    args += ["--chunk", "1h"]
    runner = CliRunner()

    def backfill(*extra: str) -> str:
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 0, result.output
        return result.output

    assert "resuming" not in backfill()
    assert "resuming: 2 of 2 chunks already done" in backfill()
    # When: the same command runs against another namespace holding the same trades
    other = Tables(tables.catalog, f"t_{uuid.uuid4().hex[:12]}")
    ensure_tables(catalog, other.namespace)
    deliver(catalog, other, trades, now=end)
    monkeypatch.setenv("OHLCV_NAMESPACE", other.namespace)
    # Then: nothing is skipped there
    assert "resuming" not in backfill()
    assert not diff(expected_candles(trades, five), stored_candles(spark, other.candles(five)))
    # When: that table is dropped and recreated, the backfill is not "already done" either
    catalog.drop_table((other.namespace, five.table))
    ensure_tables(catalog, other.namespace)
    assert "resuming" not in backfill()
    assert not diff(expected_candles(trades, five), stored_candles(spark, other.candles(five)))
    # And: --restart recomputes a finished backfill (everything unchanged)
    output = backfill("--restart")
    unchanged = [int(n) for n in re.findall(r"(\d+)\s+unchanged", output)]
    assert "resuming" not in output and len(unchanged) == 2 and all(unchanged), output

    # And: chunks sized by trades (about 100 of the 300 each, whole hours: here the two hours)
    # are a backfill of their own, resumable the same way, and both options at once are refused
    del args[-2:]
    sized = backfill("--chunk-trades", "100", "--restart")
    assert "resuming" not in sized and len(re.findall(r"(\d+)\s+unchanged", sized)) == 2, sized
    assert "resuming: 2 of 2 chunks already done" in backfill("--chunk-trades", "100")
    refused = runner.invoke(app, [*args, "--chunk", "1h", "--chunk-trades", "100"])
    assert refused.exit_code == 2 and "give one" in refused.output, refused.output


def test_two_writers_of_one_table_never_overlap(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    flow_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(57)
    now = START + timedelta(minutes=40)
    trades = random_trades(rng, START, now, 300, first_id=1)
    deliver(catalog, tables, trades, now=now)
    generate = pipeline.generate
    inside, release = threading.Event(), threading.Event()
    generated = {"n": 0}

    def holding(*args: Any, **kwargs: Any) -> jobs.RunResult:
        # The first writer stops right after its MERGE, holding the table.
        run = generate(*args, **kwargs)
        generated["n"] += 1
        if generated["n"] == 1:
            inside.set()
            release.wait(120)
        return run

    monkeypatch.setattr(pipeline, "generate", holding)
    outcome: dict[str, Any] = {}
    first = threading.Thread(target=lambda: outcome.update(first=FLOWS["1m"](at=now)))
    first.start()
    assert inside.wait(180), "the first writer never reached its MERGE"

    # When: a second writer comes and is not willing to wait
    monkeypatch.setenv("OHLCV_WRITER_WAIT_S", "2")
    refused = cast(State[Any], FLOWS["1m"](at=now, return_state=True))
    # Then: it is refused with a message, having written nothing
    assert refused.is_failed()
    message = str(refused.result(raise_on_failure=False))
    assert "another writer" in message and "nothing was written" in message
    assert generated["n"] == 1

    # When: a third writer is willing to wait, it queues until the first is done
    monkeypatch.setenv("OHLCV_WRITER_WAIT_S", "120")
    third = threading.Thread(target=lambda: outcome.update(third=FLOWS["1m"](at=now)))
    third.start()
    time.sleep(3)
    assert generated["n"] == 1, "the third writer ran while the first held the table"
    release.set()
    first.join(180)
    third.join(180)
    # Then: both published in turn: the first its candles, the third nothing new
    assert outcome["first"].published and generated["n"] == 2
    assert outcome["third"].run.new_trades == 0
    table = tables.candles(ONE_MINUTE)
    stored = stored_candles(spark, table)  # raises on a duplicate candle
    assert not diff(expected_candles(trades, ONE_MINUTE), stored)
