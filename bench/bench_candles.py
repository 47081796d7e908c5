"""Benchmark: the candle pipeline end to end, against DuckDB on the same trades as reference.

Not a test: it prints a table and writes JSON (bench/results/). It runs its own local stack
(own data directory and port), so it never touches a demo or test server.

    uv run python bench/bench_candles.py                    # 10 M trades, 50 symbols, 7 days
    uv run python bench/bench_candles.py --trades 1000000   # a quick run
    uv run python bench/bench_candles.py --trades 100000000 --days 28 --driver-memory 8g

Steps, each with its wall time and the Connect server's peak RSS (sampled every 0.2 s):
- generate the trades (day by day) into one Parquet file, decimals stored as INT64 as PyIceberg
  stores them in the trades table;
- the bare 1m candle step, Parquet in / Parquet out, in Spark over Connect and in DuckDB,
  alternating, ``--bare-repeats`` times each after a warm-up: medians and their ratio, and
  the median of the pairs' ratios (each pair saw the same moment's load);
  also once with the decimal sums (the exact fallback) for the record;
- ingest (PyIceberg, full validation and de-duplication) in batches of ``--ingest-batch``
  rows, each batch's rate beside the number of data files already in ``trades``;
- the 1m backfill through the real path (Iceberg in, audit branch, first-fill write or MERGE,
  GX validation, publish), chunks of ``--chunk-trades`` trades: throughput and its share of
  the bare step's (medians); then again into an empty table, warm (the first is the server's
  first Iceberg read and write; the bare step is measured after a warm-up);
- the backfill of every other timeframe the same way;
- steady-state incremental 1m runs (10-minute lookback, one new minute of trades each): median.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.tables import TRADES, Tables, ensure_tables
from core.timeframes import TIMEFRAMES, Timeframe
from flows.backfill import run_backfill
from infra import stack
from infra.catalog import open_catalog
from infra.session import connect
from ingest import ingest
from ingest.demo import demo_trades
from ingest.reading import text_columns
from settings import Settings
from spark_jobs import jobs
from spark_jobs.candles import INTEGER_SUMS_MAX_TRADES, TradeIdRange, candles

ONE_MINUTE = TIMEFRAMES["1m"]
BENCH_PORT = 15022
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


PARQUET_DECIMALS = {"store_decimal_as_integer": True}
"""DECIMAL(18, 8) as Parquet INT64, as PyIceberg writes the trades table's files (pyarrow's
default, a fixed-length byte array, costs Spark a per-row conversion the real path never pays)."""


def _us(t: datetime) -> int:
    return (t - EPOCH) // timedelta(microseconds=1)


class RssSampler:
    """Peak resident memory of one process, sampled in a background thread."""

    def __init__(self, pid: int | None, every_s: float = 0.2) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        if self.pid is None:
            return 0
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


class Steps:
    """Wall time and the server's peak RSS of each step."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.rows: list[dict[str, Any]] = []

    @contextmanager
    def step(self, name: str, **figures: Any) -> Iterator[dict[str, Any]]:
        row: dict[str, Any] = {"step": name, **figures}
        print(f"- {name} ...", flush=True)
        started = time.perf_counter()
        with RssSampler(self.pid) as rss:
            yield row
        row["wall_s"] = round(time.perf_counter() - started, 3)
        row["server_peak_rss_gib"] = round(rss.peak / 2**30, 2)
        self.rows.append(row)
        shown = {k: v for k, v in row.items() if k != "step"}
        print(f"  {name}: {shown}", flush=True)


def duckdb_candles(parquet: Path, out: Path) -> None:
    """The same 1m candles in DuckDB, (ts, trade_id) ordering by struct, exact decimals."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"""
        COPY (
          SELECT exchange, symbol,
                 time_bucket(INTERVAL 1 minute, ts) AS window_start,
                 arg_min(price, {{'ts': ts, 'id': trade_id}}) AS open,
                 max(price) AS high, min(price) AS low,
                 arg_max(price, {{'ts': ts, 'id': trade_id}}) AS close,
                 sum(quantity) AS volume,
                 sum(CAST(price AS DECIMAL(38, 8)) * quantity) AS quote_volume,
                 count(*) AS trade_count, min(ts) AS open_ts, max(ts) AS close_ts
          FROM read_parquet('{parquet}')
          GROUP BY ALL
        ) TO '{out}' (FORMAT parquet)
        """
    )
    con.close()


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _timed(func: Callable[[], object]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def generate(args: argparse.Namespace, start: datetime, end: datetime, path: Path) -> pa.Table:
    """Write the body of the trades (all but the last ``repeats`` minutes) to ``path`` day by
    day; return the held-back minutes (the steady-state ticks)."""
    per_minute = args.trades / (args.days * 24 * 60) / args.symbols
    symbols = [f"S{i:02d}-USD" for i in range(args.symbols)]
    ticks_start = end - timedelta(minutes=args.repeats)
    held: list[pa.Table] = []
    writer: pq.ParquetWriter | None = None
    day = start
    while day < end:
        day_end = min(day + timedelta(days=1), end)
        trades = demo_trades(
            start=day,
            end=day_end,
            symbols=symbols,
            trades_per_minute=per_minute,
            seed=int(_us(day) // 1_000_000),
            late_fraction=0.0,
            duplicate_fraction=0.0,
            bad_rows=0,
        )
        trades = trades.replace_schema_metadata(None).sort_by("ts")
        ts = pc.cast(trades["ts"], pa.int64())
        body = trades.filter(pc.less(ts, _us(ticks_start)))
        held.append(trades.filter(pc.greater_equal(ts, _us(ticks_start))))
        if writer is None:
            writer = pq.ParquetWriter(path, body.schema, **PARQUET_DECIMALS)
        writer.write_table(body, row_group_size=1_000_000)
        day = day_end
    assert writer is not None
    writer.close()
    return pa.concat_tables(held)


def _row_group_batches(source: pq.ParquetFile, rows: int) -> Iterator[list[int]]:
    """Consecutive row groups of ``source``, about ``rows`` rows at a time."""
    batch: list[int] = []
    size = 0
    for group in range(source.metadata.num_row_groups):
        batch.append(group)
        size += source.metadata.row_group(group).num_rows
        if size >= rows:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _decimals_as_int64(path: Path) -> None:
    """Rewrite a trades file of an earlier run (``--data-dir``) whose decimals are not INT64."""
    source = pq.ParquetFile(path)
    if source.schema.column(source.schema.names.index("price")).physical_type == "INT64":
        return
    rewritten = path.with_suffix(".int64.parquet")
    with pq.ParquetWriter(rewritten, source.schema_arrow, **PARQUET_DECIMALS) as writer:
        for i in range(source.num_row_groups):
            writer.write_table(source.read_row_group(i), row_group_size=1_000_000)
    rewritten.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trades", type=int, default=10_000_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--repeats", type=int, default=5, help="steady-state incremental runs")
    parser.add_argument("--bare-repeats", type=int, default=5, help="bare-step runs per engine")
    parser.add_argument("--ingest-batch", type=int, default=10_000_000)
    parser.add_argument("--chunk-trades", type=int, default=10_000_000)
    parser.add_argument("--port", type=int, default=BENCH_PORT)
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--only-bare", action="store_true", help="stop after the bare candle step")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the generated trades here and reuse them when the same arguments run again",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ohlcv-bench-"))
    settings = Settings(
        data_dir=work / "data",
        connect_port=args.port,
        ui_port=args.port - 10_000,
        driver_memory=args.driver_memory,
        spark_remote=None,
    )
    steps = Steps()
    info: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, {_memory_gib():.0f} GiB",
        "trades_requested": args.trades,
        "symbols": args.symbols,
        "days": args.days,
    }
    figures: dict[str, Any] = {}
    try:
        print(f"work dir {work}", flush=True)
        with steps.step("stack_up"):
            stack.up(settings)
        steps.pid = stack.status(settings).pid
        end = datetime(2026, 11, 20, tzinfo=UTC)
        start = end - timedelta(days=args.days)
        data = args.data_dir or work
        data.mkdir(parents=True, exist_ok=True)
        parquet, ticks_file = data / "trades.parquet", data / "ticks.parquet"
        with steps.step("generate") as row:
            if parquet.exists() and ticks_file.exists():  # --data-dir from an earlier run
                _decimals_as_int64(parquet)
                ticks = pq.read_table(ticks_file)
            else:
                ticks = generate(args, start, end, parquet)
                pq.write_table(ticks, ticks_file)
            body_rows = pq.ParquetFile(parquet).metadata.num_rows
            row["trades"] = body_rows
        info["trades"] = body_rows
        ticks_start = end - timedelta(minutes=args.repeats)

        spark = connect(settings)
        # Bare candle step, Parquet in / Parquet out, no Iceberg. The trade-id range is what a
        # run knows from its own stats (the packed ordering key needs it).
        ids_table = pq.read_table(parquet, columns=["trade_id"])
        low, high = (v.as_py() for v in pc.min_max(ids_table["trade_id"]).values())
        del ids_table
        ids = TradeIdRange(low, high)
        df = spark.read.parquet(str(parquet))

        def spark_bare(max_trades: int | None = None) -> None:
            candles(df, ONE_MINUTE, ids, max_trades=max_trades).write.mode("overwrite").parquet(
                str(work / "spark-out")
            )

        def duck_bare() -> None:
            duckdb_candles(parquet, work / "duck.parquet")

        with steps.step("bare_1m_step") as row:
            spark_bare()  # warm-up: JIT, file listing
            duck_bare()
            spark_s, duck_s = [], []
            for _ in range(args.bare_repeats):  # alternating: both see the same machine load
                spark_s.append(_timed(spark_bare))
                duck_s.append(_timed(duck_bare))
            decimal_s = _timed(lambda: spark_bare(INTEGER_SUMS_MAX_TRADES))
            row.update(
                spark_s=[round(s, 2) for s in spark_s],
                duckdb_s=[round(s, 2) for s in duck_s],
                spark_decimal_sums_s=round(decimal_s, 2),
            )
        spark_median = statistics.median(spark_s)
        duck_median = statistics.median(duck_s)
        figures.update(
            bare_spark_median_s=round(spark_median, 3),
            bare_duckdb_median_s=round(duck_median, 3),
            bare_spark_over_duckdb=round(spark_median / duck_median, 2),
            bare_pair_ratios_median=round(
                statistics.median(s / d for s, d in zip(spark_s, duck_s, strict=True)), 2
            ),
            bare_spark_trades_per_s=round(body_rows / spark_median),
            bare_duckdb_trades_per_s=round(body_rows / duck_median),
            bare_spark_decimal_sums_over_duckdb=round(decimal_s / duck_median, 2),
        )
        print(
            f"  bare step: Spark/DuckDB = {figures['bare_spark_over_duckdb']} (medians), "
            f"{figures['bare_pair_ratios_median']} (median of the pairs' ratios)",
            flush=True,
        )
        if args.only_bare:
            spark.stop()
            return

        catalog = open_catalog(settings)
        tables = Tables(settings.catalog_name, settings.namespace)
        ensure_tables(catalog, settings.namespace)
        trades_table = catalog.load_table((settings.namespace, TRADES))

        # Each batch is read as read_trades_file reads a file (text columns dictionary-encoded),
        # and the read is timed with the ingest.
        source = pq.ParquetFile(parquet, read_dictionary=text_columns(pq.read_schema(parquet)))
        ingest_rates = []
        for i, groups in enumerate(_row_group_batches(source, args.ingest_batch)):
            rows = sum(source.metadata.row_group(g).num_rows for g in groups)
            files_before = len(trades_table.refresh().inspect.files()) if i else 0
            with steps.step(f"ingest_batch_{i}", rows=rows, files_before=files_before) as row:
                result = ingest(
                    catalog,
                    settings.namespace,
                    source.read_row_groups(groups),
                    source="bench",
                    now=end,
                )
                assert result.accepted == rows, result
            ingest_rates.append(rows / steps.rows[-1]["wall_s"])
            steps.rows[-1]["rows_per_s"] = round(ingest_rates[-1])
        figures["ingest_rows_per_s_median"] = round(statistics.median(ingest_rates))

        chunk_trades = args.chunk_trades
        backfills: dict[str, dict[str, Any]] = {}
        bare_beside: list[float] = []

        def backfill_step(name: str, tf: Timeframe) -> dict[str, Any]:
            with steps.step(name) as row:
                backfill = run_backfill(
                    settings,
                    tf,
                    start,
                    ticks_start,
                    chunk_trades=chunk_trades,
                    restart=True,  # measured afresh on every bench run
                    spark=spark,
                )
                results = [done.metrics for done in backfill]
                row["chunks"] = len(results)
                row["candles"] = sum(
                    r.run.inserted + r.run.updated for r in results if r.run is not None
                )
                for step in ("generate_candles", "validate_candles", "publish_candles"):
                    row[step] = round(sum(r.seconds.get(step, 0.0) for r in results), 2)
            return steps.rows[-1]

        for tf in TIMEFRAMES.values():
            if tf is ONE_MINUTE:  # a bare step just before and just after: the same load
                bare_beside.append(_timed(spark_bare))
            backfills[tf.name] = backfill_step(f"backfill_{tf.name}", tf)
            if tf is ONE_MINUTE:
                bare_beside.append(_timed(spark_bare))
                # Again into an empty table: the first backfill is the server's first Iceberg
                # read and write (its code not yet compiled), the bare step is measured warm.
                catalog.drop_table((settings.namespace, tf.table))
                ensure_tables(catalog, settings.namespace)
                backfills["1m_warm"] = backfill_step("backfill_1m_warm", tf)
                bare_beside.append(_timed(spark_bare))
        # All five in one pass over the trades (``ohlcv backfill all``), right after the
        # per-timeframe ones: the same trades, into new empty candle tables (a first fill, as
        # each backfill above was).
        for tf in TIMEFRAMES.values():
            catalog.drop_table((settings.namespace, tf.table))
        ensure_tables(catalog, settings.namespace)
        with steps.step("backfill_all") as row:
            done = list(
                run_backfill(
                    settings,
                    list(TIMEFRAMES.values()),
                    start,
                    ticks_start,
                    chunk_trades=chunk_trades,
                    restart=True,
                    spark=spark,
                )
            )
            row["chunks"] = len(done)
            for step in ("generate_candles", "validate_candles", "publish_candles"):
                row[step] = round(sum(m.seconds.get(step, 0.0) for c in done for m in c.runs), 2)
        backfill_s = backfills["1m"]["wall_s"]
        warm_s = backfills["1m_warm"]["wall_s"]
        separate_s = sum(b["wall_s"] for name, b in backfills.items() if name != "1m_warm")
        figures.update(
            backfill_all_s=steps.rows[-1]["wall_s"],
            backfill_all_over_1m=round(steps.rows[-1]["wall_s"] / backfill_s, 2),
            backfill_all_over_1m_warm=round(steps.rows[-1]["wall_s"] / warm_s, 2),
            backfill_five_separately_over_1m=round(separate_s / backfill_s, 2),
        )
        figures.update(
            backfill_1m_trades_per_s=round(body_rows / backfill_s),
            backfill_1m_share_of_bare_step=round(spark_median / backfill_s, 2),
            bare_beside_backfill_1m_s=[round(b, 2) for b in bare_beside],
            backfill_1m_share_of_bare_beside=round(
                statistics.mean(bare_beside[:2]) / backfill_s, 2
            ),
            backfill_1m_warm_share_of_bare_step=round(spark_median / warm_s, 2),
            backfill_1m_warm_share_of_bare_beside=round(
                statistics.mean(bare_beside[1:]) / warm_s, 2
            ),
        )

        with steps.step("incremental_1m") as row:
            times = []
            tick_us = pc.cast(ticks["ts"], pa.int64())
            for i in range(args.repeats):
                t0 = ticks_start + timedelta(minutes=i)
                lo = _us(t0)
                tick = ticks.filter(
                    pc.and_(pc.greater_equal(tick_us, lo), pc.less(tick_us, lo + 60_000_000))
                )
                ingest(catalog, settings.namespace, tick, source="bench-tick", now=end)
                started = time.perf_counter()
                run = jobs.refresh_candles(spark, tables, ONE_MINUTE, now=t0 + timedelta(minutes=1))
                times.append(time.perf_counter() - started)
                print(
                    f"    tick {i}: {times[-1]:.2f} s, {run.trades_read} trades read, "
                    f"{run.inserted} inserted, {run.updated} updated",
                    flush=True,
                )
            row["runs_s"] = [round(t, 2) for t in times]
            row["median_s"] = round(statistics.median(times), 3)
        figures["incremental_1m_median_s"] = steps.rows[-1]["median_s"]
        spark.stop()
    finally:
        stack.down(settings)
        shutil.rmtree(work, ignore_errors=True)
        info["client_peak_rss_gib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
        )
        report = {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **info,
            **figures,
            "steps": steps.rows,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
        path.write_text(json.dumps(report, indent=2, default=str))
        print()
        for row in steps.rows:
            print(
                f"{row['step']:<18} {row.get('wall_s', '-'):>9} s  "
                f"server peak RSS {row.get('server_peak_rss_gib', '-')} GiB"
            )
        print()
        for key, value in {**info, **figures}.items():
            print(f"{key:<40}  {value}")
        print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
