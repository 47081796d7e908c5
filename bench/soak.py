"""Soak benchmark: months of five-minute runs, compressed. Not a test: it prints numbers.

Each cycle ingests five minutes of trades (20 symbols, 60 trades a minute each by default, at
the same rate at every hour) and runs the 1m pipeline exactly as a scheduled run does
(generate into the audit branch, GX validation, publish), with table maintenance every
``--maintain-every`` cycles. It prints each cycle's run time, and every ``--report-every``
cycles, per table: snapshots, metadata files and bytes on disk, live data files. It ends
with the goal of the README:

- the median run time of the last 100 cycles against that of cycles 100-200 (<= 1.1x), in
  wall time and in CPU time of the client and the Connect server (the work a run does,
  which neighbours on a shared machine disturb far less than its wall time);
- metadata and data-file counts flat after each maintenance, not growing with cycles.

    uv run python bench/soak.py                      # 1,000 cycles, maintenance every 100
    uv run python bench/soak.py --cycles 200         # a quick look

It runs its own local stack (own data directory and port). Market time starts at the wall
clock and advances five minutes a cycle, far faster than the wall clock: maintenance seals
partitions by market time (days of market time), while snapshot and file ages are wall-clock
ages, so ``--snapshot-age-min`` is in real minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.tables import Tables, ensure_tables
from core.timeframes import TIMEFRAMES
from flows.pipeline import RunRequest, run_pipeline, tables_for
from infra import stack
from infra.catalog import open_catalog
from infra.session import connect
from ingest import ingest
from ingest.demo import demo_trades
from settings import Settings
from spark_jobs import maintenance
from spark_jobs.maintenance import MaintenancePolicy, table_state

SOAK_PORT = 15023
SOAK_UI_PORT = 14063
CYCLE = timedelta(minutes=5)


def _cpu_s(server_pid: int) -> float:
    """CPU seconds used so far by this client and the Connect server (user + system).

    On a shared two-core machine a run's wall time also measures its neighbours; the CPU
    time the pipeline's own two processes spend is the work a run does, and must not grow.
    """
    fields = Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    server = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return server + time.process_time()


def _on_disk(location: str) -> dict[str, int]:
    """Metadata files and bytes, and data files, as they are on disk (what an operator pays)."""
    root = Path(location.removeprefix("file:"))
    meta = [p for p in (root / "metadata").glob("*") if p.is_file()]
    data = [p for p in (root / "data").rglob("*") if p.is_file()]
    return {
        "metadata_files": len(meta),
        "metadata_bytes": sum(p.stat().st_size for p in meta),
        "data_files_on_disk": len(data),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--maintain-every", type=int, default=100)
    parser.add_argument("--report-every", type=int, default=50)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--per-minute", type=float, default=60)
    parser.add_argument("--snapshot-age-min", type=float, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ohlcv-soak-"))
    settings = Settings(
        data_dir=work / "data",
        connect_port=SOAK_PORT,
        ui_port=SOAK_UI_PORT,
        spark_remote=None,
        gx_dir=work / "gx",
    )
    policy = MaintenancePolicy(
        snapshot_age=timedelta(minutes=args.snapshot_age_min), retain_last=20
    )
    market_start = datetime.now(UTC).replace(second=0, microsecond=0)
    tables: Tables = tables_for(settings)
    tf = TIMEFRAMES["1m"]
    symbols = [f"S{i:02d}-USD" for i in range(args.symbols)]
    cycles: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    try:
        stack.up(settings)
        catalog = open_catalog(settings)
        ensure_tables(catalog, settings.namespace)
        spark = connect(settings)
        server_pid = stack.status(settings).pid
        assert server_pid is not None
        next_id = 1
        for cycle in range(1, args.cycles + 1):
            start = market_start + (cycle - 1) * CYCLE
            end = start + CYCLE
            batch = demo_trades(
                start=start,
                end=end,
                symbols=symbols,
                trades_per_minute=args.per_minute,
                seed=cycle,
                first_trade_id=next_id,
                # The same rate at every hour: the goal compares cycles at different hours.
                daily_cycle=False,
            )
            next_id += batch.num_rows
            clock = time.perf_counter()
            ingest(catalog, settings.namespace, batch, source=f"soak-{cycle}", now=end)
            ingest_s = time.perf_counter() - clock
            clock, cpu = time.perf_counter(), _cpu_s(server_pid)
            result = run_pipeline(spark, settings, tf, RunRequest(now=end))
            run_s = time.perf_counter() - clock
            run_cpu_s = _cpu_s(server_pid) - cpu
            row: dict[str, Any] = {
                "cycle": cycle,
                "ingest_s": round(ingest_s, 3),
                "run_s": round(run_s, 3),
                "run_cpu_s": round(run_cpu_s, 3),
                "trades_read": result.run.trades_read,
                "published": result.published,
                "steps_s": {step: round(s, 3) for step, s in result.seconds.items()},
            }
            if cycle % args.maintain_every == 0:
                clock = time.perf_counter()
                done = maintenance.maintain(spark, tables, maintenance.all_tables(), policy, end)
                row["maintain_s"] = round(time.perf_counter() - clock, 3)
                row["snapshots_expired"] = sum(d.snapshots_expired for d in done)
                row["files_compacted"] = sum(d.files_compacted for d in done)
            cycles.append(row)
            print(
                f"cycle {cycle}: run {run_s:.2f} s, {run_cpu_s:.2f} CPU s"
                f" (validate {result.seconds.get('validate_candles', 0):.2f} s)"
                f", ingest {ingest_s:.2f} s"
                + (f", maintenance {row['maintain_s']:.1f} s" if "maintain_s" in row else ""),
                flush=True,
            )
            if cycle % args.report_every == 0 or cycle == args.cycles:
                report: dict[str, Any] = {"cycle": cycle}
                for name in ("trades", "trades_rejected", tf.table):
                    state = table_state(spark, tables.name(name))
                    report[name] = {
                        "snapshots": state.snapshots,
                        "live_data_files": state.data_files,
                        **_on_disk(catalog.load_table((settings.namespace, name)).location()),
                    }
                reports.append(report)
                print(f"  tables after cycle {cycle}: {json.dumps(report)}", flush=True)
        spark.stop()
    finally:
        stack.down(settings)

    summary: dict[str, Any] = {"cycles": args.cycles, "maintain_every": args.maintain_every}
    if len(cycles) >= 300:
        early, late = cycles[99:200], cycles[-100:]  # cycles 100-200 and the last 100

        def median(rows: list[dict[str, Any]], key: str) -> float:
            return round(statistics.median(row[key] for row in rows), 3)

        summary.update(
            median_run_s_cycles_100_200=median(early, "run_s"),
            median_run_s_last_100=median(late, "run_s"),
            ratio=round(median(late, "run_s") / median(early, "run_s"), 3),
            median_run_cpu_s_cycles_100_200=median(early, "run_cpu_s"),
            median_run_cpu_s_last_100=median(late, "run_cpu_s"),
            cpu_ratio=round(median(late, "run_cpu_s") / median(early, "run_cpu_s"), 3),
            median_ingest_s_cycles_100_200=median(early, "ingest_s"),
            median_ingest_s_last_100=median(late, "ingest_s"),
            median_trades_read_cycles_100_200=median(early, "trades_read"),
            median_trades_read_last_100=median(late, "trades_read"),
        )
        for step in cycles[-1]["steps_s"]:
            summary[f"median_{step}_s_cycles_100_200"] = round(
                statistics.median(row["steps_s"].get(step, 0.0) for row in early), 3
            )
            summary[f"median_{step}_s_last_100"] = round(
                statistics.median(row["steps_s"].get(step, 0.0) for row in late), 3
            )
    print(json.dumps(summary, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"soak-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps({"summary": summary, "cycles": cycles, "reports": reports}))
    print(f"written {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
