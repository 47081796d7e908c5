"""Benchmark: candle throughput through Spark Connect into Iceberg, against DuckDB as reference.

Not a test: it prints a table and writes JSON (bench/results/). It runs its own local stack
(own data directory and port), so it never touches a demo or test server.

    uv run python bench/bench_candles.py                   # 10 M trades, 50 symbols, 7 days
    uv run python bench/bench_candles.py --trades 1000000  # a quick run

Measures:
- ingest throughput (PyIceberg, with validation and de-duplication);
- 1m backfill throughput (trades/s), Spark Connect -> Iceberg MERGE;
- wall time of one steady-state incremental 1m run (10-minute lookback, one new minute of
  trades) with 1 M and with all N trades in the table (median of several runs);
- the bare 1m candle step, Parquet in / Parquet out, in Spark over Connect and in DuckDB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.tables import Tables, ensure_tables
from core.timeframes import TIMEFRAMES
from infra import stack
from infra.catalog import open_catalog
from infra.session import connect
from ingest import ingest
from ingest.demo import demo_trades
from settings import Settings
from spark_jobs import jobs
from spark_jobs.candles import TradeIdRange, candles

ONE_MINUTE = TIMEFRAMES["1m"]
BENCH_PORT = 15022


def _timed(label: str, results: dict[str, float], func):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = func()
    results[label] = round(time.perf_counter() - started, 3)
    print(f"  {label}: {results[label]:.2f} s", flush=True)
    return value


def duckdb_candles(parquet_glob: str, out: Path) -> None:
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
          FROM read_parquet('{parquet_glob}')
          GROUP BY ALL
        ) TO '{out}' (FORMAT parquet)
        """
    )
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trades", type=int, default=10_000_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--repeats", type=int, default=5, help="incremental runs per table size")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ohlcv-bench-"))
    settings = Settings(data_dir=work / "data", connect_port=BENCH_PORT, spark_remote=None)
    results: dict[str, float] = {}
    info: dict[str, object] = {"trades": args.trades, "symbols": args.symbols, "days": args.days}
    try:
        print(f"work dir {work}", flush=True)
        _timed("stack_up_s", results, lambda: stack.up(settings))
        end = datetime(2026, 11, 20, tzinfo=UTC)
        start = end - timedelta(days=args.days)
        minutes = args.days * 24 * 60
        per_minute = args.trades / minutes / args.symbols
        symbols = [f"S{i:02d}-USD" for i in range(args.symbols)]
        trades = _timed(
            "generate_s",
            results,
            lambda: demo_trades(
                start=start,
                end=end,
                symbols=symbols,
                trades_per_minute=per_minute,
                seed=1,
                late_fraction=0.0,
                duplicate_fraction=0.0,
                bad_rows=0,
            ),
        )
        trades = trades.sort_by("ts")
        n = trades.num_rows
        info["trades"] = n

        # The newest minute is held back: it is what the steady-state runs append, tick by tick.
        ticks_start = end - timedelta(minutes=args.repeats)
        ts_us = pc.cast(trades["ts"], pa.int64())
        cut_us = int((ticks_start - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
        body = trades.filter(pc.less(ts_us, cut_us))
        parquet_dir = work / "parquet"
        parquet_dir.mkdir()
        pq.write_table(body, parquet_dir / "trades.parquet", row_group_size=1_000_000)

        catalog = open_catalog(settings)
        tables = Tables(settings.catalog_name, settings.namespace)
        ensure_tables(catalog, settings.namespace)
        spark = connect(settings)

        # Bare candle step, Parquet in / Parquet out, no Iceberg.
        df = spark.read.parquet(str(parquet_dir / "trades.parquet"))
        low, high = pc.min_max(body["trade_id"]).values()
        ids = TradeIdRange(low.as_py(), high.as_py())
        for attempt in range(2):  # the first run warms the JVM
            _timed(
                f"spark_parquet_1m_s_run{attempt + 1}",
                results,
                lambda: (
                    candles(df, ONE_MINUTE, ids)
                    .write.mode("overwrite")
                    .parquet(str(work / "spark-out"))
                ),
            )
        for attempt in range(2):
            _timed(
                f"duckdb_parquet_1m_s_run{attempt + 1}",
                results,
                lambda: duckdb_candles(str(parquet_dir / "trades.parquet"), work / "duck.parquet"),
            )

        # 1 M trades in the table, then steady-state incremental runs.
        first_n = min(1_000_000, body.num_rows)
        first, rest = body.slice(0, first_n), body.slice(first_n)
        _timed(
            "ingest_1m_rows_s",
            results,
            lambda: ingest(catalog, settings.namespace, first, source="bench", now=end),
        )

        def steady(label: str, table_rows_end: datetime, tick_source: pa.Table) -> None:
            jobs.refresh_candles(spark, tables, ONE_MINUTE, now=table_rows_end)  # catch up
            times = []
            tick_us = pc.cast(tick_source["ts"], pa.int64())
            for i in range(args.repeats):
                t0 = table_rows_end + timedelta(minutes=i)
                lo = int((t0 - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
                tick = tick_source.filter(
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
            results[label] = round(statistics.median(times), 3)
            print(f"  {label}: {results[label]:.2f} s (median of {len(times)})", flush=True)

        first_end = datetime.fromtimestamp(first["ts"][-1].value / 1e6, UTC)
        # Ticks for the small table come from just after its last trade.
        steady("incremental_1m_s_at_1M", first_end, rest)

        # All N trades: ingest the rest (minus what the ticks above already appended), backfill.
        _timed(
            "ingest_rest_s",
            results,
            lambda: ingest(catalog, settings.namespace, rest, source="bench", now=end),
        )
        results["ingest_trades_per_s"] = round(
            n / (results["ingest_1m_rows_s"] + results["ingest_rest_s"])
        )
        backfill_runs = _timed(
            "backfill_1m_s",
            results,
            lambda: list(
                jobs.backfill(
                    spark, tables, ONE_MINUTE, start, ticks_start, chunk=timedelta(days=1)
                )
            ),
        )
        results["backfill_1m_trades_per_s"] = round(body.num_rows / results["backfill_1m_s"])
        info["backfill_candles"] = sum(r.inserted + r.updated + r.unchanged for r in backfill_runs)
        steady("incremental_1m_s_at_N", ticks_start, trades)

        spark_best = min(results["spark_parquet_1m_s_run1"], results["spark_parquet_1m_s_run2"])
        duck_best = min(results["duckdb_parquet_1m_s_run1"], results["duckdb_parquet_1m_s_run2"])
        results["spark_parquet_1m_trades_per_s"] = round(body.num_rows / spark_best)
        results["duckdb_parquet_1m_trades_per_s"] = round(body.num_rows / duck_best)
        results["spark_over_duckdb_time_ratio"] = round(spark_best / duck_best, 2)
        spark.stop()
    finally:
        stack.down(settings)
        shutil.rmtree(work, ignore_errors=True)

    report = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), **info, **results}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2))
    print()
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
