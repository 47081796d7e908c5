"""Landing zone passes: files/s and rows/s. Not a test: it prints numbers.

Three measurements, each in a fresh process (what `ohlcv ingest` and a scheduled pass are)
into fresh tables of a local SQLite catalog; the time is the pass (or ingest) call itself:

- ``small``: one pass over ``--small-files`` Binance spot zips of ``--small-rows`` trades each;
- ``zip``: one pass over one Binance spot zip of ``--rows`` trades (no header, microseconds);
- ``parquet``: ``ingest_file`` of the same rows as one Parquet file in the project's layout.

Goals (issue 28): the 10 M-row zip at >= 1 M rows/s, the project's Parquet at >= 2 M rows/s in
a fresh process, 1,000 small files in < 60 s::

    uv run python bench/ingest_files.py --data-dir /tmp/ingest-files --repeats 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

START_US = 1_769_904_000_000_000  # 2026-02-01T00:00Z
DAY_US = 86_400_000_000


def binance_columns(rows: int, seed: int, first_id: int = 1) -> dict[str, pa.Array]:
    """Binance spot trades: ids, prices with two decimals, quantities with eight, us times."""
    rng = np.random.default_rng(seed)
    cents = rng.integers(4_000_000, 4_200_000, rows)
    price = pc.binary_join_element_wise(
        pa.array(cents // 100).cast(pa.string()),
        pc.utf8_lpad(pa.array(cents % 100).cast(pa.string()), 2, "0"),
        ".",
    )
    qty = pc.binary_join_element_wise(
        pa.repeat(pa.scalar("0"), rows),
        pc.utf8_lpad(pa.array(rng.integers(1, 99_999_999, rows)).cast(pa.string()), 8, "0"),
        ".",
    )
    return {
        "id": pa.array(np.arange(first_id, first_id + rows, dtype=np.int64)),
        "price": price,
        "qty": qty,
        "quoteQty": price,
        "time": pa.array(START_US + np.sort(rng.integers(0, DAY_US, rows))),
        "isBuyerMaker": pa.array(rng.random(rows) < 0.5),
        "isBestMatch": pa.array(np.ones(rows, dtype=bool)),
    }


def write_zip(path: Path, columns: dict[str, pa.Array]) -> None:
    buffer = io.BytesIO()
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    pacsv.write_csv(pa.table(columns), buffer, options)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr(path.with_suffix(".csv").name, buffer.getvalue())


def write_parquet(path: Path, columns: dict[str, pa.Array], symbol: str) -> None:
    """The same trades in the project's own layout (decimals, timestamps)."""
    rows = len(columns["id"])
    table = pa.table(
        {
            "exchange": pa.repeat(pa.scalar("binance"), rows),
            "symbol": pa.repeat(pa.scalar(symbol), rows),
            "trade_id": columns["id"],
            "price": columns["price"].cast(pa.decimal128(18, 8)),
            "quantity": columns["qty"].cast(pa.decimal128(18, 8)),
            "side": pc.if_else(columns["isBuyerMaker"], "sell", "buy"),
            "ts": columns["time"].cast(pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, path, row_group_size=1_000_000)


def prepare(data: Path, small_files: int, small_rows: int, rows: int) -> None:
    small = data / f"small-{small_files}x{small_rows}"
    if not small.exists():
        small.mkdir(parents=True)
        for i in range(small_files):
            write_zip(small / f"S{i:04d}USDT-trades-2026-02-01.zip", binance_columns(small_rows, i))
    big = data / f"big-{rows}"
    if not big.exists():
        big.mkdir(parents=True)
        columns = binance_columns(rows, 7)
        write_zip(big / "BTCUSDT-trades-2026-02-01.zip", columns)
        write_parquet(data / f"big-{rows}.parquet", columns, "BTCUSDT")


def measure(kind: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    from core.tables import ensure_tables
    from infra.catalog import open_catalog
    from ingest import ingest_file
    from ingest.landing import Landing, run_pass
    from settings import Settings

    work = data / "runs" / uuid.uuid4().hex[:8]
    catalog = open_catalog(Settings(data_dir=work))
    ensure_tables(catalog, "bench")
    limits = {"max_files": 10**6, "max_bytes": 10**13, "batch_rows": 5_000_000}
    cpu, started = time.process_time(), time.perf_counter()
    if kind == "parquet":
        result = ingest_file(catalog, "bench", data / f"big-{args.rows}.parquet")
        files, rows = 1, result.accepted
    else:
        where = data / (
            f"small-{args.small_files}x{args.small_rows}" if kind == "small" else f"big-{args.rows}"
        )
        done = run_pass(catalog, "bench", Landing.at(str(where)), **limits)  # type: ignore[arg-type]
        assert not done.failed, done.failed[0].reason
        files, rows = len(done.ingested), done.accepted
    seconds = time.perf_counter() - started
    return {
        "kind": kind,
        "files": files,
        "rows": rows,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "files_per_s": round(files / seconds, 1),
        "rows_per_s": round(rows / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/ohlcv-ingest-files"))
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--small-rows", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["small", "zip", "parquet"], action="append")
    parser.add_argument("--measure", choices=["small", "zip", "parquet"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.data_dir.resolve()
    if args.measure:
        print(json.dumps(measure(args.measure, data, args)))
        return
    started = time.perf_counter()
    prepare(data, args.small_files, args.small_rows, args.rows)
    print(f"files ready in {data} ({time.perf_counter() - started:.0f} s)", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeats):
        for kind in args.only or ["small", "zip", "parquet"]:  # side by side, interleaved
            command = [sys.executable, __file__, "--measure", kind, *sys.argv[1:]]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            one = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(one), flush=True)
            results.setdefault(kind, []).append(one)
    print(f"medians of {args.repeats}, load {os.getloadavg()[0]:.1f}:")
    for kind, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        print(
            f"  {kind:8s} {runs[0]['files']:5d} files {runs[0]['rows']:>10d} rows  "
            f"{seconds:7.2f} s  {statistics.median(r['files_per_s'] for r in runs):8.1f} files/s  "
            f"{statistics.median(r['rows_per_s'] for r in runs):>10.0f} rows/s"
        )


if __name__ == "__main__":
    main()
