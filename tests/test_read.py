"""The read side against the oracle: published reads, the live tail, as-of reads, revisions.

One story, run once for the module (two real pipeline runs on the session's server): trades
are published, then new trades and one late trade arrive; the live tail is read; the next run
publishes. Every test checks a part of that story against the independent oracle.
"""

from __future__ import annotations

import csv
import io
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from cli.main import app
from core.tables import CANDLE_VALUE_COLUMNS, Tables, ensure_tables
from core.timeframes import TIMEFRAMES
from flows import pipeline
from flows.pipeline import RunRequest
from flows.results import PipelineResult, RunMetrics
from read import AsOfUnavailable, read_candles, read_revisions
from read.as_of import snapshot_as_of
from read.filters import row_filter
from read.query import CandleQuery
from settings import Settings
from spark_jobs import maintenance
from spark_jobs.maintenance import MaintenancePolicy
from tests.support.environment import export_settings
from tests.support.oracle import Key, Trade, diff, expected_candles
from tests.support.trades import EXCHANGE, START, deliver, random_trades

ROOT = Path(__file__).resolve().parent.parent
ONE_MINUTE = TIMEFRAMES["1m"]
TIMESTAMPS = ("window_end", "open_ts", "close_ts")
# The oracle's columns (the stored trading_date and synthetic are checked in test_calendars).
ORACLE_COLUMNS = tuple(c for c in CANDLE_VALUE_COLUMNS if c not in ("trading_date", "synthetic"))
LATE_WINDOW = START + timedelta(minutes=7)


def _us(value: Any) -> int:
    return int(pd.Timestamp(value).value // 1000)


def oracle_shape(frame: pd.DataFrame) -> dict[Key, dict[str, Any]]:
    """A candle DataFrame keyed and typed like the oracle (timestamps in epoch microseconds)."""
    out: dict[Key, dict[str, Any]] = {}
    for row in frame.to_dict("records"):
        key = (row["exchange"], row["symbol"], _us(row["window_start"]))
        assert key not in out, f"duplicate candle {key}"
        assert all(isinstance(row[c], Decimal) for c in ("open", "volume", "vwap")), row
        out[key] = {
            c: _us(row[c]) if c in TIMESTAMPS else int(row[c]) if c == "trade_count" else row[c]
            for c in ORACLE_COLUMNS
        }
    return out


def only(candles: dict[Key, Any], keys: Iterable[Key]) -> dict[Key, Any]:
    wanted = set(keys)
    return {k: v for k, v in candles.items() if k in wanted}


@dataclass
class Story:
    settings: Settings
    tables: Tables
    first: list[Trade]
    arrivals: list[Trade]
    """Trades after the first publication: new windows, and one late trade."""
    published_at: datetime
    """A time between the first publication and the second."""
    live: pd.DataFrame
    """read_candles(live=True) between the two publications."""
    second: PipelineResult

    @property
    def everything(self) -> list[Trade]:
        return [*self.first, *self.arrivals]


@pytest.fixture(scope="module")
def story(
    spark: SparkSession,
    catalog: Catalog,
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Story:
    namespace = f"t_{uuid.uuid4().hex[:12]}"
    ensure_tables(catalog, namespace)
    tables = Tables(settings.catalog_name, namespace)
    run_settings = settings.model_copy(
        update={"namespace": namespace, "gx_dir": tmp_path_factory.mktemp("gx")}
    )
    rng = random.Random(151)
    t1 = START + timedelta(minutes=150)
    # A BTC-USD trade in the window the late trade will revise, so it is published first
    anchor = Trade(
        EXCHANGE,
        "BTC-USD",
        99_998,
        Decimal("60000.50000000"),
        Decimal("1.25000000"),
        "sell",
        LATE_WINDOW + timedelta(seconds=10),
    )
    first = [*random_trades(rng, START, t1, 600, first_id=1), anchor]
    deliver(catalog, tables, first, now=t1)
    pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=t1))
    published_at = datetime.now(UTC)

    # Given: new trades after the published range, and one late trade into a published window
    t2 = t1 + timedelta(minutes=10)
    late = Trade(
        EXCHANGE,
        "BTC-USD",
        99_999,
        Decimal("123456.78900000"),
        Decimal("0.50000000"),
        "buy",
        LATE_WINDOW + timedelta(seconds=30),
    )
    arrivals = [*random_trades(rng, t1, t2, 120, first_id=10_000), late]
    deliver(catalog, tables, arrivals, now=t2)
    live = read_candles("1m", settings=run_settings, spark=spark, live=True)
    second = pipeline.run_pipeline(spark, run_settings, ONE_MINUTE, RunRequest(now=t2))
    assert second.published
    return Story(run_settings, tables, first, arrivals, published_at, live, second)


def test_published_candles_read_through_pyiceberg_equal_the_oracle(
    story: Story, catalog: Catalog, spark: SparkSession
) -> None:
    expected = expected_candles(story.everything, ONE_MINUTE)
    read = read_candles("1m", settings=story.settings, catalog=catalog)
    assert not diff(expected, oracle_shape(read))
    assert list(read.columns)[:3] == ["exchange", "symbol", "window_start"]
    assert str(read["window_start"].dt.tz) == "UTC"
    # The same query on a Spark session gives the same frame
    on_spark = read_candles("1m", settings=story.settings, spark=spark)
    pd.testing.assert_frame_equal(on_spark, read)

    # A filtered read: one symbol, 30 minutes; only the matching partitions are planned
    start, end = START + timedelta(minutes=10), START + timedelta(minutes=40)
    some = read_candles("1m", "ETH-USD", start, end, settings=story.settings, catalog=catalog)
    want = {
        k: v for k, v in expected.items() if k[1] == "ETH-USD" and _us(start) <= k[2] < _us(end)
    }
    assert want and not diff(want, oracle_shape(some))
    table = catalog.load_table((story.tables.namespace, ONE_MINUTE.table))
    query = CandleQuery.of("1m", "ETH-USD", start, end)
    planned = list(table.scan(row_filter=row_filter(query)).plan_files())
    assert 0 < len(planned) < len(list(table.scan().plan_files()))


def test_the_live_tail_is_what_the_next_run_publishes(story: Story, catalog: Catalog) -> None:
    live = oracle_shape(story.live)
    provisional = {
        (r["exchange"], r["symbol"], _us(r["window_start"]))
        for r in story.live.to_dict("records")
        if r["provisional"]
    }
    # Provisional: exactly the candles the arrivals touched (new windows and the late one)
    touched = set(expected_candles(story.arrivals, ONE_MINUTE))
    assert provisional == touched
    assert (EXCHANGE, "BTC-USD", _us(LATE_WINDOW)) in provisional
    # Each provisional candle is bit-identical to what the next run published
    published = oracle_shape(read_candles("1m", settings=story.settings, catalog=catalog))
    assert not diff(only(published, provisional), only(live, provisional))
    # and the whole live view is the oracle of all trades; the rest is the first publication
    assert not diff(expected_candles(story.everything, ONE_MINUTE), live)
    settled = live.keys() - provisional
    assert not diff(only(expected_candles(story.first, ONE_MINUTE), settled), only(live, settled))


def test_as_of_reads_return_the_candles_published_then(
    story: Story, catalog: Catalog, spark: SparkSession
) -> None:
    before = read_candles("1m", settings=story.settings, catalog=catalog, as_of=story.published_at)
    assert not diff(expected_candles(story.first, ONE_MINUTE), oracle_shape(before))
    on_spark = read_candles("1m", settings=story.settings, spark=spark, as_of=story.published_at)
    pd.testing.assert_frame_equal(on_spark, before)
    now = read_candles("1m", settings=story.settings, catalog=catalog, as_of=datetime.now(UTC))
    assert not diff(expected_candles(story.everything, ONE_MINUTE), oracle_shape(now))

    # Older than any kept history: a clear error naming the time and the oldest one kept
    with pytest.raises(AsOfUnavailable, match="oldest published state") as failure:
        read_candles("1m", settings=story.settings, catalog=catalog, as_of=START)
    assert START.isoformat() in str(failure.value)


def test_the_revision_record_names_exactly_the_revised_window(
    story: Story, catalog: Catalog
) -> None:
    revisions = read_revisions("1m", settings=story.settings, catalog=catalog)
    key = (EXCHANGE, "BTC-USD", _us(LATE_WINDOW))
    keys = [
        (r["exchange"], r["symbol"], _us(r["window_start"])) for r in revisions.to_dict("records")
    ]
    assert keys == [key]
    row = revisions.iloc[0]
    old = expected_candles(story.first, ONE_MINUTE)[key]
    new = expected_candles(story.everything, ONE_MINUTE)[key]
    for column, want in old.items():
        got = row[f"old_{column}"]
        assert (_us(got) if column in TIMESTAMPS else got) == want, column
    for column, want in new.items():
        got = row[f"new_{column}"]
        assert (_us(got) if column in TIMESTAMPS else got) == want, column
    assert story.published_at <= row["revised_at"] <= datetime.now(UTC)
    assert row["candle_snapshot_id"] == story.second.main_after
    # and the run's metrics artifact says so in one line
    rows = {r["metric"]: r["value"] for r in RunMetrics.of(ONE_MINUTE, story.second).rows()}
    assert rows["revised"] == "1"
    assert rows["revised_windows"] == f"{EXCHANGE}/BTC-USD {LATE_WINDOW:%Y-%m-%dT%H:%M}Z"


def _cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    export_settings(monkeypatch, settings)
    return CliRunner().invoke(app, ["candles", *args])


def test_the_candles_command_exports_exact_csv_and_parquet(
    story: Story, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = expected_candles(story.everything, ONE_MINUTE)
    window = ["--start", START.isoformat(), "--end", (START + timedelta(hours=1)).isoformat()]
    done = _cli(story.settings, monkeypatch, "BTC-USD", "--tf", "1m", *window)
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows and list(rows[0])[:4] == ["exchange", "symbol", "window_start", "window_end"]
    assert all(len(r["open"].split(".")[1]) == 8 for r in rows)  # exact text, price scale
    got = {
        (r["exchange"], r["symbol"], _us(r["window_start"])): {
            c: _us(r[c]) if c in TIMESTAMPS else int(r[c]) if c == "trade_count" else Decimal(r[c])
            for c in ORACLE_COLUMNS
        }
        for r in rows
    }
    want = {
        k: v for k, v in expected.items() if k[1] == "BTC-USD" and k[2] < _us(START) + 3_600_000_000
    }
    assert not diff(want, got)

    # Parquet keeps the decimal types; --as-of gives the late window's earlier candle
    out = tmp_path / "btc.parquet"
    done = _cli(story.settings, monkeypatch, "BTC-USD", *window, "--output", str(out))
    assert done.exit_code == 0, done.output
    written = pq.read_table(out)
    assert str(written.schema.field("open").type) == "decimal128(18, 8)"
    assert not diff(want, oracle_shape(written.to_pandas()))
    at = story.published_at.isoformat()
    done = _cli(story.settings, monkeypatch, "BTC-USD", *window, "--as-of", at)
    late = next(
        r
        for r in csv.DictReader(io.StringIO(done.stdout))
        if _us(r["window_start"]) == _us(LATE_WINDOW)
    )
    first = expected_candles(story.first, ONE_MINUTE)[(EXCHANGE, "BTC-USD", _us(LATE_WINDOW))]
    assert Decimal(late["volume"]) == first["volume"]

    # --live (a Spark session): nothing pending after the second run, so all published
    done = _cli(story.settings, monkeypatch, "BTC-USD", *window, "--live")
    assert done.exit_code == 0, done.output
    live = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {r["provisional"] for r in live} == {"false"}
    assert [r["close"] for r in live] == [r["close"] for r in rows]
    done = _cli(story.settings, monkeypatch, "BTC-USD", *window, "--format", "table")
    assert done.exit_code == 0 and "candles of BTC-USD" in done.stdout, done.output

    # An as-of time older than the history kept: one line, exit code 1
    done = _cli(story.settings, monkeypatch, "BTC-USD", "--as-of", START.isoformat())
    assert done.exit_code == 1
    assert len(done.output.strip().splitlines()) == 1 and "oldest published state" in done.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["BTC-USD", "--tf", "2m"], "unknown timeframe '2m'"),
        (["BTC-USD", "--start", "2026-03-02", "--end", "2026-03-01"], "is not before end"),
        (["BTC-USD", "--start", "yesterday"], "is not ISO-8601"),
        ([" BTC-USD"], "without surrounding spaces"),
        (["BTC-USD", "--last", "2h", "--start", "2026-03-01"], "exclude each other"),
        (["BTC-USD", "--format", "parquet"], "add --output FILE"),
        (["BTC-USD", "--format", "xlsx"], "format 'xlsx' is not known"),
        (["BTC-USD", "--live", "--as-of", "2026-03-01"], "exclude each other"),
    ],
)
def test_the_candles_command_refuses_bad_arguments_in_one_line(
    args: list[str], says: str, tmp_path: Path
) -> None:
    done = CliRunner().invoke(
        app, ["candles", *args], env={"OHLCV_DATA_DIR": str(tmp_path / "data")}
    )
    assert done.exit_code == 2, done.output
    assert says in " ".join(done.output.split()), done.output


READ_WITHOUT_JVM = """
import sys
from typer.testing import CliRunner
from cli.main import app

for args in (["--help"], ["candles", "--help"], ["candles", "BTC-USD", "--last", "1d"]):
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, (args, done.output)
loaded = {m.split(".")[0] for m in sys.modules}
heavy = sorted(loaded & {"pyspark", "great_expectations", "prefect"})
print("heavy:", ",".join(heavy))
"""


def test_reading_candles_needs_no_jvm_and_help_imports_nothing_heavy(tmp_path: Path) -> None:
    from infra.catalog import open_catalog

    settings = Settings(data_dir=tmp_path / "data")
    ensure_tables(open_catalog(settings), settings.namespace)
    done = subprocess.run(
        [sys.executable, "-c", READ_WITHOUT_JVM],
        cwd=ROOT,
        env={"OHLCV_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "heavy: \n" in done.stdout, done.stdout


def test_maintenance_keeps_the_as_of_history_of_its_retention_window(
    story: Story, catalog: Catalog, spark: SparkSession
) -> None:
    # Given: a retention window that began between the two publications, keeping one snapshot
    # (without the protection, the first publication's snapshot would be expired here)
    policy = MaintenancePolicy(snapshot_age=datetime.now(UTC) - story.published_at, retain_last=1)
    # When: maintenance expires everything else (last in this module: it changes the story)
    # (market time START: no partition is sealed, so nothing is compacted; only expiry matters)
    maintenance.maintain_table(spark, story.tables, ONE_MINUTE.table, policy, START)
    # Then: the candles published at the start of the window are still readable as of then
    kept = read_candles("1m", settings=story.settings, catalog=catalog, as_of=story.published_at)
    assert not diff(expected_candles(story.first, ONE_MINUTE), oracle_shape(kept))
    # and anything older fails, naming the oldest time still kept
    with pytest.raises(AsOfUnavailable, match="oldest published state") as failure:
        read_candles("1m", settings=story.settings, catalog=catalog, as_of=START)
    oldest = str(failure.value).split("still kept (")[1].split(";")[0]
    assert datetime.fromisoformat(oldest) <= story.published_at


def test_as_of_picks_the_state_main_held_then_or_names_the_oldest_kept() -> None:
    history = [(1_000, 11), (2_000, 12), (3_000, 13)]  # (ms it became current, snapshot)
    at = datetime(1970, 1, 1, tzinfo=UTC)
    assert snapshot_as_of(history, at + timedelta(milliseconds=2_500), "t") == 12
    assert snapshot_as_of(history, at + timedelta(milliseconds=2_000), "t") == 12
    assert snapshot_as_of(history, at + timedelta(days=1), "t") == 13
    with pytest.raises(AsOfUnavailable, match=r"before the oldest .* \(1970-01-01T00:00:01\+00:00"):
        snapshot_as_of(history, at, "t")
    with pytest.raises(AsOfUnavailable, match="never been published"):
        snapshot_as_of([], at, "t")


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: CandleQuery.of("1m", start=datetime(2026, 3, 1)), "has no time zone"),
        (lambda: CandleQuery.of("7m"), "unknown timeframe '7m'"),
        (lambda: CandleQuery.of("1m", ["BTC-USD", ""]), "symbol '' is not a stored symbol"),
        (lambda: CandleQuery.of("1m", "X" * 65), "at most 64 printable characters"),
        (lambda: read_candles("1m", live=True), "pass spark="),
    ],
)
def test_read_arguments_are_refused_with_what_to_pass(call: Any, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        call()


def _stored_candles(symbols: int, start: datetime, minutes: int, note: str | None = None) -> Any:
    """Candles as the pipeline stores them (every column), with arbitrary exact values."""
    import pyarrow as pa

    from read.shape import candle_arrow_schema

    rows = []
    for s in range(symbols):
        for m in range(minutes):
            window = start + timedelta(minutes=m)
            price = Decimal(100 + s) + Decimal(m) / 1000 + Decimal("0.00000001")
            rows.append(
                {
                    "exchange": EXCHANGE,
                    "symbol": f"S{s}-USD",
                    "window_start": window,
                    "window_end": window + timedelta(minutes=1),
                    **dict.fromkeys(("open", "high", "low", "close", "vwap"), price),
                    "volume": Decimal("1.5"),
                    "quote_volume": (price * Decimal("1.5")).quantize(Decimal("1e-16")),
                    "trade_count": 1 + m,
                    "open_ts": window,
                    "close_ts": window + timedelta(seconds=59),
                    "computed_at": window + timedelta(minutes=2),
                }
            )
    table = pa.Table.from_pylist(rows, schema=candle_arrow_schema())
    return table if note is None else table.append_column("note", pa.array([note] * len(rows)))


def test_arrow_reads_a_scan_exactly_as_pyiceberg_does(catalog: Catalog) -> None:
    from pyiceberg.types import StringType

    from read.iceberg_reader import arrow_readable, columns_never_changed, read_scan

    # Given: a 1m table written by six commits (as the pipeline writes, a file each), then a
    # column added (older files lack it) and two more commits
    namespace = f"r_{uuid.uuid4().hex[:12]}"
    table = ensure_tables(catalog, namespace)[ONE_MINUTE.table]
    for step in range(6):
        table.append(_stored_candles(3, START + timedelta(minutes=5 * step), 5))
    with table.update_schema() as update:
        update.add_column("note", StringType())
    for step in range(6, 8):
        table.append(_stored_candles(3, START + timedelta(minutes=5 * step), 5, note="added"))
    table = catalog.load_table((namespace, ONE_MINUTE.table))
    assert columns_never_changed(table)

    # When: the same queries are read by Arrow's scanner and by PyIceberg
    queries = [
        CandleQuery.of(
            "1m", ["S1-USD", "S2-USD"], START + timedelta(minutes=3), START + timedelta(minutes=33)
        ),
        CandleQuery.of("1m", exchange=EXCHANGE),
        CandleQuery.of("1m", "S0-USD", end=START + timedelta(minutes=1)),
        CandleQuery.of("1m", "NOPE-USD"),
    ]
    for query in queries:
        scan = table.scan(row_filter=row_filter(query))
        tasks = list(scan.plan_files())
        assert query.symbols == ("NOPE-USD",) or arrow_readable(table, tasks), "Arrow must read"
        fast, reference = read_scan(table, scan, query), scan.to_arrow()
        # Then: the same rows, every column (the new one null in the older files)
        order = [(c, "ascending") for c in ("symbol", "window_start")]
        assert fast.sort_by(order).equals(reference.sort_by(order)), query.describe()
    assert read_scan(table, table.scan(), CandleQuery.of("1m")).num_rows == 3 * 40

    # And: once a column is renamed, names no longer identify columns: PyIceberg reads
    with table.update_schema() as update:
        update.rename_column("note", "remark")
    table = catalog.load_table((namespace, ONE_MINUTE.table))
    assert not columns_never_changed(table)
    query = CandleQuery.of("1m", ["S1-USD"], START, START + timedelta(minutes=40))
    scan = table.scan(row_filter=row_filter(query))
    assert arrow_readable(table, list(scan.plan_files())) is None
    fallback = read_scan(table, scan, query)
    assert "remark" in fallback.column_names
    order = [("window_start", "ascending")]
    assert fallback.sort_by(order).equals(scan.to_arrow().sort_by(order))
    assert fallback.num_rows == 40
