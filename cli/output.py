"""Everything the commands print: summaries on standard output, errors on standard error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from flows.backfill import Backfill
    from flows.results import RunMetrics
    from infra.stack import LocalStack, StackStatus
    from ingest import IngestResult
    from ingest.landing import FileState, PassResult
    from settings import Settings

console = Console()
# Errors are one line each, however narrow the terminal (or the pipe) is.
err = Console(stderr=True, soft_wrap=True)

STATUS_COLUMNS = (
    "timeframe",
    "newest published window (UTC)",
    "main snapshot",
    "trades snapshot processed",
    "last finished run (UTC)",
    "state",
    "took",
    "next scheduled (UTC)",
)
SUMMARY_COLUMNS = (
    "symbol",
    "candles",
    "first window (UTC)",
    "last window (UTC)",
    "trades",
    "last close",
)


# stack ---------------------------------------------------------------------------------------


def print_storage_and_catalog(shown: dict[str, StackStatus]) -> None:
    """Status lines of the local S3 server and REST catalog (when configured or running)."""
    for title, status in shown.items():
        console.print(f"{title} {status.describe()}")


def print_started(started: LocalStack) -> None:
    print_storage_and_catalog(started.storage_and_catalog)
    console.print(f"Spark Connect {started.spark.describe()} ({started.spark_s:.1f} s)")
    if started.prefect is None:
        console.print(
            f"Prefect: PREFECT_API_URL={started.prefect_url} (no local Prefect server started)"
        )
    else:
        console.print(f"Prefect {started.prefect.describe()} ({started.prefect_s:.1f} s)")


def print_shape(settings: Settings) -> None:
    console.print(
        "the other commands use the same shape when it is in their settings: export "
        f"OHLCV_CATALOG_TYPE={settings.catalog_type.value} "
        f"OHLCV_STORAGE={settings.storage.value}"
    )


def print_cluster(settings: Settings, workers: list[int]) -> None:
    if workers:
        console.print(
            f"standalone cluster: master spark://127.0.0.1:{settings.master_port} "
            f"(UI http://127.0.0.1:{settings.master_ui_port}), {len(workers)} workers"
        )


# ingestion and runs --------------------------------------------------------------------------


def print_ingest(result: IngestResult | None) -> None:
    if result is None:
        return
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(result.rejected_by_reason.items()))
    again = result.rejects_already_recorded
    console.print(
        f"rows in {result.rows_in} = accepted {result.accepted} + duplicates "
        f"{result.duplicates} + rejected {result.rejected}"
        + (f" ({reasons})" if reasons else "")
        + (f"; {again} of the rejects were already recorded" if again else "")
    )


def print_landing_pass(result: PassResult) -> None:
    """One line per file the pass settled, then the pass's totals."""
    from flows.trades_ingest import result_rows

    for row in result_rows(result):
        reason = f": {row['reason']}" if row["reason"] else ""
        rows = f", {row['rows']} rows" if row["rows"] != "" else ""
        console.print(f"{row['status']} {row['file']} ({row['format'] or 'unread'}{rows}){reason}")
    console.print(
        f"{len(result.ingested)} files ingested ({len(result.changed)} changed since last "
        f"time), {len(result.failed)} failed, {result.left} left for the next pass; trades: "
        f"{result.accepted} accepted, {result.duplicates} duplicates, {result.rejected} "
        f"rejected ({result.seconds:.1f} s)"
    )


def print_landing_status(states: list[FileState]) -> None:
    """Every file of the landing zone: state, size, when ingested, why it failed."""
    table = Table("state", "file", "bytes", "recorded (UTC)", "format", "rows", "reason")
    for s in states:
        r = s.record
        recorded = f"{r.recorded_at:%Y-%m-%d %H:%M:%S}" if r and s.state != "pending" else ""
        reason = (r.reason or "") if r and s.state in ("failed", "ingested") else ""
        if s.state == "changed" and r:
            reason = f"content changed since {r.status} (was {r.identity.size} bytes)"
        table.add_row(
            s.state,
            s.entry.path,
            str(s.entry.size),
            recorded,
            (r.format or "") if r and s.state == "ingested" else "",
            str(r.rows) if r and r.rows is not None and s.state == "ingested" else "",
            reason,
        )
    console.print(table)
    counts = {
        k: sum(1 for s in states if s.state == k)
        for k in ("pending", "changed", "ingested", "failed")
    }
    console.print(", ".join(f"{v} {k}" for k, v in counts.items()))


def print_metrics(metrics: RunMetrics) -> None:
    run = metrics.run
    if run is None:
        console.print(f"{metrics.timeframe}: skipped ({metrics.skipped})")
        return
    before_lookback = f", {run.late_trades} before the lookback" if run.late_trades else ""
    checked = (
        f"validated ({metrics.expectations_passed}/{metrics.expectations_evaluated} "
        "expectations passed); "
        if metrics.expectations_evaluated
        else ""
    )
    outcome = (
        f"published snapshot {metrics.main_snapshot_id}"
        if metrics.published
        else "nothing to publish"
    )
    seconds = sum(metrics.seconds.values())
    console.print(
        f"{metrics.timeframe}: read {run.trades_read} trades "
        f"({run.new_trades} new{before_lookback}), {run.windows_recomputed} "
        f"candles recomputed: {run.inserted} inserted, {run.updated} updated, "
        f"{run.unchanged} unchanged; {checked}{outcome} in {seconds:.1f} s",
        soft_wrap=True,  # one line per step, however long
    )


def print_backfill(backfill: Backfill) -> None:
    """Run the backfill's remaining chunks, with a progress bar and one line per chunk."""
    from rich.progress import Progress

    chunks = len(backfill.chunks)
    if backfill.resumed:
        console.print(
            f"resuming: {backfill.resumed} of {chunks} chunks already done "
            "(--restart recomputes them)"
        )
    with Progress(console=console) as progress:
        bar = progress.add_task(f"{backfill.tf} backfill", total=chunks, completed=backfill.resumed)
        for done in backfill:
            progress.advance(bar)
            for metrics in done.runs:
                run = metrics.run
                assert run is not None  # a backfill chunk is never skipped
                label = f" {metrics.timeframe}" if len(done.runs) > 1 else ""
                progress.console.print(
                    f"{done.window.start:%Y-%m-%d %H:%M}..{done.window.end:%Y-%m-%d %H:%M}"
                    f"{label}: {run.trades_read} trades, {run.inserted} inserted, "
                    f"{run.updated} updated, {run.unchanged} unchanged"
                )
    console.print(f"{backfill.tf} backfill of {chunks} chunks complete")


def print_rows(rows: list[dict[str, Any]], title: str) -> None:
    """Rows of equal keys as a table (maintenance metrics)."""
    out = Table(title=title)
    for column in rows[0]:
        out.add_column(column)
    for row in rows:
        out.add_row(*(str(v) for v in row.values()))
    console.print(out)


def print_status(rows: dict[str, list[str]]) -> None:
    table = Table(title="OHLCV status")
    for column in STATUS_COLUMNS:
        table.add_column(column)
    for name, values in rows.items():
        table.add_row(name, *values)
    console.print(table)


def print_summary(rows: list[Any], title: str) -> None:
    table = Table(title=title)
    for column in SUMMARY_COLUMNS:
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["symbol"],
            str(r["candles"]),
            r["first"],
            r["last"],
            str(r["trades"]),
            str(r["last_close"]),
        )
    console.print(table)


def print_next_steps(prefect_ui: str, data_docs: Path) -> None:
    console.print("\nWhat to look at next:")
    console.print(f"  Prefect UI (the five flow runs, their tasks, logs, artifacts): {prefect_ui}")
    console.print(f"  data docs (every validation): {data_docs}")
    console.print("  `ohlcv status`, and `ohlcv stack down` when you are done")


# candles -------------------------------------------------------------------------------------


def print_candle_table(rows: Any, title: str) -> None:
    """The columns that fit a terminal (CSV and Parquet have them all)."""
    from read.export import TABLE_COLUMNS, text_rows

    shown = rows.select([c for c in TABLE_COLUMNS if c in rows.column_names])
    out = Table(title=title)
    for column in shown.column_names:
        out.add_column(column, no_wrap=True)
    for row in text_rows(shown):
        out.add_row(*row)
    console.print(out)


def write_candles(rows: Any, chosen: str, output: Path | None, title: str) -> None:
    """The candles in the chosen format, to ``output`` or standard output."""
    if rows.num_rows == 0:
        err.print(f"no {title}")
    if chosen == "table":
        print_candle_table(rows, title)
    elif chosen == "parquet":
        from read.export import write_parquet

        assert output is not None  # params.chosen_format insists
        write_parquet(rows, output)
    elif output is None:
        from read.export import write_csv

        write_csv(rows, sys.stdout)
    else:
        from read.export import write_csv

        with output.open("w", newline="") as out:
            write_csv(rows, out)
    if output is not None:
        err.print(f"{rows.num_rows} candles written to {output}")


def print_automations(applied: list[Any]) -> None:
    """What applying the automations did to each."""
    for one in applied:
        console.print(f"automation '{one.name}': {one.action}")
