"""How fast `ohlcv candles` answers for a day of 1m candles (no JVM involved).

Builds a throwaway catalog whose ``ohlcv_1m`` holds one day of candles for N symbols, written
the way the 1m pipeline writes them (one commit every five minutes: 288 snapshots and small
files, as before maintenance compacts the day), or with ``--compacted`` one file per hour
partition (as after it), then times the command as a user runs it: a fresh process, CSV to a
pipe. Prints the median of several runs, for the whole day of one symbol.

    uv run python bench/read_candles.py [--symbols 6] [--repeat 5] [--compacted]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa

from core.tables import CANDLE_SCHEMA, ensure_tables
from core.timeframes import TIMEFRAMES
from infra.catalog import open_catalog
from settings import Settings

DAY = datetime(2026, 11, 26, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def _candles(symbols: int, start: datetime, minutes: int) -> pa.Table:
    """``minutes`` 1m candles from ``start`` for each symbol, with plausible exact values."""
    rows: dict[str, list[object]] = {f.name: [] for f in CANDLE_SCHEMA.fields}
    for s in range(symbols):
        for m in range(minutes):
            window = start + timedelta(minutes=m)
            base = Decimal(60000 + s * 100 + (window.minute % 17)) + Decimal("0.12345678")
            values = {
                "exchange": "bench",
                "symbol": f"SYM{s}-USD",
                "window_start": window,
                "window_end": window + timedelta(minutes=1),
                "open": base,
                "high": base + Decimal("5.5"),
                "low": base - Decimal("4.25"),
                "close": base + Decimal("1.00000001"),
                "volume": Decimal("12.34567890"),
                "quote_volume": (base * Decimal("12.34567890")).quantize(Decimal("1e-16")),
                "trade_count": 60,
                "vwap": base,
                "open_ts": window + timedelta(seconds=1),
                "close_ts": window + timedelta(seconds=59),
                "computed_at": window + timedelta(minutes=1, seconds=30),
                "trading_date": window.date(),
                "synthetic": False,
            }
            for k, v in values.items():
                rows[k].append(v)
    return pa.table(rows, schema=CANDLE_SCHEMA.as_arrow())


def build(data_dir: Path, symbols: int, compacted: bool) -> int:
    """A day of candles, committed every five minutes as the 1m pipeline does (a file per
    commit), or one file per hour partition, as after maintenance compacted the day.
    Returns the number of commits."""
    settings = Settings(data_dir=data_dir)
    catalog = open_catalog(settings)
    table = ensure_tables(catalog, settings.namespace)[TIMEFRAMES["1m"].table]
    minutes = 60 if compacted else 5
    for step in range(24 * 60 // minutes):
        table.append(_candles(symbols, DAY + timedelta(minutes=minutes * step), minutes))
    return 24 * 60 // minutes


def time_command(data_dir: Path, repeat: int) -> tuple[list[float], list[float]]:
    """Wall and CPU time of `ohlcv candles SYM0-USD --tf 1m --start DAY --end DAY+1d` > pipe.

    The CPU time (user + system of the process) is the work the command does; on a shared
    machine its wall time also measures the neighbours.
    """
    command = [
        sys.executable,
        "-c",
        "from cli.main import main; main()",
        "candles",
        "SYM0-USD",
        "--tf",
        "1m",
        "--start",
        DAY.isoformat(),
        "--end",
        (DAY + timedelta(days=1)).isoformat(),
    ]
    env = {**os.environ, "OHLCV_DATA_DIR": str(data_dir)}
    times, cpu = [], []
    for _ in range(repeat):
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        times.append(time.monotonic() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime)
        lines = done.stdout.count("\n")
        assert lines == 24 * 60 + 1, f"expected a header and 1440 candles, got {lines} lines"
    return times, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--data-dir", type=Path, help="Build here and keep it; reuse it if it exists already"
    )
    parser.add_argument(
        "--compacted", action="store_true", help="One file per hour, as after maintenance"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        started = time.monotonic()
        commits = None
        if not (data_dir / "catalog.db").exists():
            commits = build(data_dir, args.symbols, args.compacted)
        built = time.monotonic() - started
        times, cpu = time_command(data_dir, args.repeat)
    print(
        json.dumps(
            {
                "symbols": args.symbols,
                "commits": commits,
                "compacted": args.compacted,
                "build_s": round(built, 1),
                "command_s": [round(t, 2) for t in times],
                "command_median_s": round(statistics.median(times), 2),
                "command_cpu_s": [round(t, 2) for t in cpu],
                "command_cpu_median_s": round(statistics.median(cpu), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
