"""Prefect's history, bounded: the maintenance flow's deletion of old flow runs, at scale.

Not a test: it prints numbers. It starts its own local Prefect server (`ohlcv stack up`'s code,
own data directory and port, never 4200), then, batch after batch, records cheap flow runs
through the API, each like what a candle run leaves behind without its Spark work (the run
going Pending -> Running -> Completed, a task run, ten log lines, a metrics table artifact;
`--real` runs actual flows instead: three task runs, ten log lines and three artifacts each,
several times slower) and after each batch prunes the history as the maintenance flow does
(:func:`flows.prefect_history.prune_flow_runs`) with a short retention: the compressed clock.
After each batch it prints the flow runs made so far and kept, what was deleted and how long
that took, and the size of Prefect's SQLite database: the file, and the bytes in use (pages
minus free pages; SQLite reuses freed pages, so the file stops growing once deletion keeps up).

    uv run python bench/prefect_history.py                        # 2,000 flow runs
    uv run python bench/prefect_history.py --runs 400 --batch 100 # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra import prefect_server
from settings import Settings

DATA_DIR = Path("/tmp/prefect-history-bench")
PORT = 4603


ROWS = ("flow_run", "task_run", "log", "artifact", "events")


def _db_sizes(home: Path) -> tuple[float, float, list[int]]:
    """(file MB incl. WAL, MB of pages in use, rows of each of :data:`ROWS`) of Prefect's
    database."""
    db = home / "prefect.db"
    files = sum(p.stat().st_size for p in home.glob("prefect.db*"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        pages, free, size = (
            con.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
        rows = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ROWS]
    return files / 1e6, (pages - free) * size / 1e6, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="flow runs in all")
    parser.add_argument("--batch", type=int, default=250, help="flow runs between prunings")
    parser.add_argument("--retention-s", type=float, default=20, help="the short retention")
    parser.add_argument("--threads", type=int, default=1, help="flow runs made side by side")
    parser.add_argument("--real", action="store_true", help="run real flows (slow)")
    args = parser.parse_args()

    shutil.rmtree(DATA_DIR, ignore_errors=True)
    settings = Settings(data_dir=DATA_DIR, prefect_port=PORT)
    prefect_server.up(settings)
    os.environ["PREFECT_API_URL"] = prefect_server.local_url(settings)
    home = DATA_DIR / "prefect"
    from prefect import flow, get_run_logger, task
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate, LogCreate
    from prefect.states import Completed, Pending, Running

    from flows.prefect_history import prune_flow_runs

    table = [{"metric": f"metric_{m}", "value": str(m * 7)} for m in range(12)]

    @task
    def step(i: int) -> int:
        for line in range(10):
            get_run_logger().warning("run %d: log line %d like a candle run's", i, line)
        create_table_artifact(key="bench-metrics", table=table)
        create_markdown_artifact(key="bench-validation", markdown="# validation\n- passed")
        create_table_artifact(key="bench-gaps", table=table[:3])
        return i

    @flow(name="bench history")
    def cheap(i: int) -> int:
        return step(i) + step(i) + step(i)

    def recorded(i: int) -> None:
        """A run like it, recorded through the API without running it (one task run, ten log
        lines, the metrics table): what the server stores of a run, at a fraction of the cost."""
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(cheap, name=f"bench-{i}", state=Pending())
            client.set_flow_run_state(run.id, Running())
            task_run = client.create_task_run(step, run.id, "0", state=Completed())
            client.create_logs(
                LogCreate(
                    name="prefect.task_runs",
                    level=30,
                    message=f"run {i}: log line {line} like a candle run's",
                    timestamp=datetime.now(UTC),  # type: ignore[arg-type]
                    flow_run_id=run.id,
                    task_run_id=task_run.id,
                )
                for line in range(10)
            )
            client.create_artifact(
                ArtifactCreate(key="bench-metrics", type="table", data=table, flow_run_id=run.id)
            )
            client.set_flow_run_state(run.id, Completed())

    make = cheap if args.real else recorded

    print(
        f"{args.runs} flow runs in batches of {args.batch}, retention {args.retention_s:g} s, "
        f"Prefect database in {home}"
    )
    print(
        "batch  runs made  kept  deleted  artifacts  prune s  file MB before/after  "
        "used MB before/after  rows after: " + " / ".join(ROWS)
    )
    made, used_after = 0, []
    try:
        with ThreadPoolExecutor(args.threads) as pool:
            while made < args.runs:
                n = min(args.batch, args.runs - made)
                list(pool.map(make, range(made, made + n)))
                made += n
                time.sleep(1)  # the last runs' logs and events reach the server
                file_before, used_before, _ = _db_sizes(home)
                started = time.monotonic()
                deleted = artifacts = 0
                while True:  # the maintenance flow deletes one batch per run; here, all due
                    pruned = prune_flow_runs(timedelta(seconds=args.retention_s), batch=500)
                    deleted, artifacts = deleted + pruned.flow_runs, artifacts + pruned.artifacts
                    if not pruned.more:
                        break
                took = time.monotonic() - started
                time.sleep(2)  # the server deletes the runs' logs in the background
                file_after, used_after_now, rows = _db_sizes(home)
                used_after.append(used_after_now)
                with get_client(sync_client=True) as client:
                    kept = client.count_flow_runs()
                print(
                    f"{made // args.batch:5d}  {made:9d}  {kept:4d}  {deleted:7d}  "
                    f"{artifacts:9d}  {took:7.1f}  {file_before:8.2f} / {file_after:6.2f}  "
                    f"{used_before:8.2f} / {used_after_now:6.2f}  "
                    + " / ".join(str(r) for r in rows),
                    flush=True,
                )
        print(
            f"used MB after pruning: first {used_after[0]:.2f}, last {used_after[-1]:.2f}, "
            f"median {statistics.median(used_after):.2f}"
        )
    finally:
        prefect_server.down(settings)


if __name__ == "__main__":
    main()
