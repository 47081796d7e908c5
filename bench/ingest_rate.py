"""Ingestion throughput (PyIceberg, full validation and de-duplication). Not a test: it prints
numbers.

Three measurements, each into fresh tables of its own (a local SQLite catalog and warehouse
under the work directory; no Spark, no server):

- ``big``: one Parquet file of ``--trades`` trades (default 10 M, 50 symbols, 7 days) in one
  ``ingest_file`` call, the file's read included (with ``--text-ids``, every id as text:
  ``ETH-<n>``);
- ``batches``: the same file in batches of ``--batch`` rows, into one table, each batch's rate
  beside the number of data files already in ``trades``;
- ``feed``: ``--feed-cycles`` ingests of five minutes of a demo feed (20 symbols, 60 trades a
  minute each, its duplicates and bad rows included), as the soak does, each one's time beside
  the data files already in ``trades`` and ``trades_rejected``: the cost must not grow with them.

For each it prints wall and CPU seconds (this process, all threads: on a shared machine the CPU
time is the work done, the wall time also measures the neighbours) and rows per second::

    uv run python bench/ingest_rate.py --data-dir /tmp/ingest-data --repeats 3

The code measured is whichever ``ingest`` package Python imports: put another checkout first on
``PYTHONPATH`` to measure it with the same script and data.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog

import ingest as ingest_package
from core.tables import TRADES, TRADES_REJECTED, ensure_tables
from infra.catalog import open_catalog
from ingest import IngestResult, ingest, ingest_file
from ingest.demo import demo_trades
from settings import Settings

END = datetime(2026, 11, 20, tzinfo=UTC)


def write_trades_file(path: Path, trades: int, symbols: int, days: float) -> None:
    """``trades`` demo trades (no duplicates, no bad rows) over ``days`` days before END, written
    day by day in ts order, 1 M rows per row group (what bench_candles.py writes)."""
    per_minute = trades / (days * 24 * 60) / symbols
    names = [f"S{i:02d}-USD" for i in range(symbols)]
    start = END - timedelta(days=days)
    writer: pq.ParquetWriter | None = None
    day = start
    while day < END:
        day_end = min(day + timedelta(days=1), END)
        table = demo_trades(
            start=day,
            end=day_end,
            symbols=names,
            trades_per_minute=per_minute,
            seed=int(day.timestamp()),
            late_fraction=0.0,
            duplicate_fraction=0.0,
            bad_rows=0,
        )
        table = table.replace_schema_metadata(None).sort_by("ts")
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=1_000_000)
        day = day_end
    assert writer is not None
    writer.close()


def with_text_ids(path: Path) -> Path:
    """The trades of ``path`` with their ids as text, ``ETH-<id>`` as Deribit writes them (made
    once beside it)."""
    out = path.with_name(f"{path.stem}-text-ids.parquet")
    if not out.exists():
        table = pq.read_table(path)
        text = pa.large_string()
        ids = pc.binary_join_element_wise(
            pa.scalar("ETH-", text), table["trade_id"].cast(text), pa.scalar("", text)
        )
        table = table.set_column(table.schema.get_field_index("trade_id"), "trade_id", ids)
        pq.write_table(table, out, row_group_size=1_000_000)
    return out


def _timed(func: Callable[[], IngestResult]) -> tuple[IngestResult, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = func()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _data_files(catalog: Catalog, namespace: str, table: str) -> int:
    snapshot = catalog.load_table((namespace, table)).current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.get("total-data-files", "0"))


def _fresh(catalog: Catalog, name: str) -> str:
    catalog.create_namespace(name)
    ensure_tables(catalog, name)
    return name


def measure_big(catalog: Catalog, path: Path, namespace: str) -> dict[str, Any]:
    ns = _fresh(catalog, namespace)
    rows = pq.ParquetFile(path).metadata.num_rows
    result, wall, cpu = _timed(lambda: ingest_file(catalog, ns, path, now=END))
    assert result.accepted == rows, result
    return {
        "rows": rows,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "rows_per_s": round(rows / wall),
    }


def measure_batches(
    catalog: Catalog, path: Path, batch: int, namespace: str
) -> list[dict[str, Any]]:
    ns = _fresh(catalog, namespace)
    rows = []
    # Read as read_trades_file reads a file: the text columns dictionary-encoded.
    source = pq.ParquetFile(path, read_dictionary=["exchange", "symbol", "side"])
    for i, records in enumerate(source.iter_batches(batch_size=batch)):
        raw = pa.Table.from_batches([records])
        files = _data_files(catalog, ns, TRADES)
        result, wall, cpu = _timed(partial(ingest, catalog, ns, raw, source=f"bench-{i}", now=END))
        assert result.accepted == raw.num_rows, result
        rows.append(
            {
                "batch": i,
                "rows": raw.num_rows,
                "files_before": files,
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "rows_per_s": round(raw.num_rows / wall),
            }
        )
    return rows


def measure_feed(catalog: Catalog, cycles: int, namespace: str) -> list[dict[str, Any]]:
    ns = _fresh(catalog, namespace)
    symbols = [f"S{i:02d}-USD" for i in range(20)]
    start = datetime(2026, 11, 20, tzinfo=UTC)
    next_id = 1
    rows = []
    for cycle in range(cycles):
        window = start + cycle * timedelta(minutes=5)
        end = window + timedelta(minutes=5)
        raw = demo_trades(
            start=window,
            end=end,
            symbols=symbols,
            trades_per_minute=60,
            seed=cycle + 1,
            first_trade_id=next_id,
            daily_cycle=False,
        )
        next_id += raw.num_rows
        files = _data_files(catalog, ns, TRADES)
        rejected_files = _data_files(catalog, ns, TRADES_REJECTED)
        result, wall, cpu = _timed(
            partial(ingest, catalog, ns, raw, source=f"feed-{cycle}", now=end)
        )
        rows.append(
            {
                "cycle": cycle,
                "rows": raw.num_rows,
                "rejected": result.rejected,
                "files_before": files,
                "rejected_files_before": rejected_files,
                "wall_s": round(wall, 4),
                "cpu_s": round(cpu, 4),
            }
        )
    return rows


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 4)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trades", type=int, default=10_000_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--batch", type=int, default=1_000_000)
    parser.add_argument("--feed-cycles", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each measurement")
    parser.add_argument(
        "--only", choices=("big", "batches", "feed"), action="append", help="default: all three"
    )
    parser.add_argument("--label", default="", help="a name for this run in the JSON output")
    parser.add_argument(
        "--text-ids", action="store_true", help="big and batches with text ids (ETH-<n>)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="where the trades file is kept (made if missing, reused when present)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    only = set(args.only or ("big", "batches", "feed"))

    args.data_dir.mkdir(parents=True, exist_ok=True)
    path = args.data_dir / f"trades-{args.trades}-{args.symbols}-{args.days:g}.parquet"
    if not path.exists():
        print(f"writing {path}", flush=True)
        write_trades_file(path, args.trades, args.symbols, args.days)
    if args.text_ids:
        path = with_text_ids(path)
    print(f"ingest package: {Path(ingest_package.__file__).parent}", flush=True)
    rows_in_file = pq.ParquetFile(path).metadata.num_rows

    work = Path(tempfile.mkdtemp(prefix="ohlcv-ingest-bench-"))
    settings = Settings(data_dir=work / "data", spark_remote=None)
    catalog = open_catalog(settings)
    report: dict[str, Any] = {
        "label": args.label,
        "ingest_package": str(Path(ingest_package.__file__).parent),
        "started_at": datetime.now(UTC).isoformat(),
        "load_average_start": os.getloadavg(),
        "rows": rows_in_file,
        "big": [],
        "batches": [],
        "feed": [],
    }
    for repeat in range(args.repeats):
        if "big" in only:
            row = measure_big(catalog, path, f"big{repeat}")
            report["big"].append(row)
            print(
                f"big   #{repeat}: {row['rows']:,} rows {row['wall_s']:.2f} s wall "
                f"{row['cpu_s']:.2f} s CPU, {row['rows_per_s'] / 1e6:.2f} M rows/s",
                flush=True,
            )
        if "batches" in only:
            rows = measure_batches(catalog, path, args.batch, f"batches{repeat}")
            report["batches"].append(rows)
            for r in rows:
                print(
                    f"batch #{repeat}.{r['batch']}: {r['files_before']:3d} files before, "
                    f"{r['wall_s']:.2f} s wall {r['cpu_s']:.2f} s CPU, "
                    f"{r['rows_per_s'] / 1e6:.2f} M rows/s",
                    flush=True,
                )
        if "feed" in only:
            rows = measure_feed(catalog, args.feed_cycles, f"feed{repeat}")
            report["feed"].append(rows)
            tenth = max(len(rows) // 10, 1)
            for part in (rows[:tenth], rows[-tenth:]):
                print(
                    f"feed  #{repeat} cycles {part[0]['cycle']}-{part[-1]['cycle']}: "
                    f"{part[0]['files_before']}-{part[-1]['files_before']} trades files, "
                    f"{part[0]['rejected_files_before']}-{part[-1]['rejected_files_before']} "
                    f"reject files: median {_median(part, 'wall_s'):.3f} s wall "
                    f"{_median(part, 'cpu_s'):.3f} s CPU",
                    flush=True,
                )
    report["load_average_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"ingest-{args.label or 'run'}-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    (args.out / name).write_text(json.dumps(report, indent=2))
    print(f"load average {report['load_average_start']} -> {report['load_average_end']}")
    print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
