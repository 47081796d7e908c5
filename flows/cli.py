"""The ``ohlcv`` command line: thin wiring of settings, infra and job functions."""

from __future__ import annotations

import json
import os
import re
import time
import webbrowser
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from expectations.validation import ValidationFailed, build_data_docs, data_docs_index
from flows import pipeline
from infra import stack
from infra.artifacts import ArtifactError, ensure_artifacts
from infra.catalog import open_catalog
from infra.session import ConnectError, close, connect
from settings import Settings
from spark_jobs import jobs
from spark_jobs.demo_data import DEFAULT_SYMBOLS, demo_trades, feed_position
from spark_jobs.ingest import IngestResult, SchemaError, ingest, ingest_file
from spark_jobs.tables import TRADES, Tables, ensure_tables
from spark_jobs.timeframes import TIMEFRAMES, Timeframe, timeframe

app = typer.Typer(
    help="Exact OHLCV candles from Iceberg trades over Spark Connect.", no_args_is_help=True
)
stack_app = typer.Typer(
    help="The local Spark Connect server and Iceberg catalog.", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")
console = Console()
err = Console(stderr=True)

F_ = TypeVar("F_", bound=Callable[..., Any])
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _friendly_errors(func: F_) -> F_:
    """Turn the errors a user can act on into one clear line and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ValidationFailed as e:
            err.print(f"[red]validation failed, main unchanged:[/red] {e}")
            raise typer.Exit(2) from None
        except (ConnectError, stack.StackError, ArtifactError, SchemaError, ValueError) as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None
        except PySparkException as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            err.print(f"[red]Spark error:[/red] {first}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def parse_duration(text: str) -> timedelta:
    """'90s', '10m', '2h', '2d' -> timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(
            f"duration {text!r} is not understood: use a number and s, m, h or d (e.g. 10m)"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_time(text: str) -> datetime:
    """ISO-8601; a time without offset is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text!r} is not ISO-8601: use e.g. 2026-11-26T14:05:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@contextmanager
def _session(settings: Settings) -> Iterator[SparkSession]:
    spark = connect(settings)
    try:
        yield spark
    finally:
        close(spark)


# stack ---------------------------------------------------------------------------------------


@stack_app.command("up")
@_friendly_errors
def stack_up(
    workers: Annotated[
        int | None,
        typer.Option(
            help="Also start a standalone master and N workers on loopback for the server "
            "(default: OHLCV_WORKERS, 0 = local mode)"
        ),
    ] = None,
) -> None:
    """Start the local Spark Connect server (reuses a running one)."""
    started = time.monotonic()
    settings = Settings() if workers is None else Settings(workers=workers)
    status = stack.up(settings)
    console.print(f"Spark Connect {status.describe()} ({time.monotonic() - started:.1f} s)")
    cluster = stack.cluster_pids(settings)
    if cluster["workers"]:
        console.print(
            f"standalone cluster: master spark://127.0.0.1:{settings.master_port} "
            f"(UI http://127.0.0.1:{settings.master_ui_port}), {len(cluster['workers'])} workers"
        )


@stack_app.command("down")
@_friendly_errors
def stack_down() -> None:
    """Stop the local Spark Connect server."""
    console.print(f"Spark Connect {stack.down(Settings()).describe()}")


@stack_app.command("status")
@_friendly_errors
def stack_status() -> None:
    """Show whether the local server runs, its URL and log file."""
    console.print(f"Spark Connect {stack.status(Settings()).describe()}")


@app.command()
@_friendly_errors
def setup() -> None:
    """Fetch the pinned JVM artifacts into the cache (done by `stack up` too)."""
    settings = Settings()
    for path in ensure_artifacts(settings.jar_cache_dir):
        console.print(f"ok {path}")


# ingestion -----------------------------------------------------------------------------------


def _print_ingest(result: IngestResult | None) -> None:
    if result is None:
        return
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(result.rejected_by_reason.items()))
    console.print(
        f"rows in {result.rows_in} = accepted {result.accepted} + duplicates "
        f"{result.duplicates} + rejected {result.rejected}" + (f" ({reasons})" if reasons else "")
    )


@app.command("ingest")
@_friendly_errors
def ingest_command(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Parquet or CSV file")],
) -> None:
    """Validate a file of trades and append it to `trades` (rejects go to `trades_rejected`)."""
    settings = Settings()
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    _print_ingest(ingest_file(catalog, settings.namespace, path))


@app.command("demo-data")
@_friendly_errors
def demo_data_command(
    hours: Annotated[float, typer.Option(help="How many hours of trades, ending now")] = 48,
    symbols: Annotated[int, typer.Option(help="How many symbols")] = 6,
    trades_per_minute: Annotated[float, typer.Option(help="Average per symbol")] = 20,
    seed: Annotated[int, typer.Option()] = 7,
) -> None:
    """Generate realistic synthetic trades (with late, duplicate and bad rows) and ingest them."""
    _print_ingest(_ingest_demo(Settings(), hours, symbols, trades_per_minute, seed))


def _ingest_demo(
    settings: Settings, hours: float, symbols: int, per_minute: float, seed: int
) -> IngestResult | None:
    """Ingest demo trades for the last ``hours``, continuing the feed already in the table.

    A second demo appends only the trades since the newest one stored, with trade ids after
    the highest stored one, as a live feed would; None when no time has passed since then.
    """
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(hours=hours)
    names = list(DEFAULT_SYMBOLS)[:symbols] + [
        f"SYM{i:02d}-USD" for i in range(max(0, symbols - len(DEFAULT_SYMBOLS)))
    ]
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    first_id = None
    position = feed_position(catalog.load_table((settings.namespace, TRADES)))
    if position is not None:
        newest, highest_id = position
        start = max(start, newest + timedelta(microseconds=1))
        first_id = highest_id + 1
    if start >= end:
        console.print(f"no new demo trades: the table already holds trades up to {end:%H:%M} UTC")
        return None
    table = demo_trades(
        start=start,
        end=end,
        symbols=names,
        trades_per_minute=per_minute,
        seed=seed,
        first_trade_id=first_id,
    )
    return ingest(catalog, settings.namespace, table, source="demo-data", now=end)


# candle jobs ---------------------------------------------------------------------------------


def _timeframe_arg(value: str) -> Timeframe:
    return timeframe(value)


def _candle_flows() -> Any:
    """The Prefect flows, imported on first use (Prefect takes a while to import)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows import candle_flows

    return candle_flows


def _print_metrics(metrics: dict[str, Any]) -> None:
    if "skipped" in metrics:
        console.print(f"{metrics['timeframe']}: skipped ({metrics['skipped']})")
        return
    late = metrics["late_trades"]
    before_lookback = f", {late} before the lookback" if late else ""
    checked = (
        f"validated ({metrics['expectations_passed']}/{metrics['expectations_evaluated']} "
        "expectations passed); "
        if metrics["expectations_evaluated"]
        else ""
    )
    outcome = (
        f"published snapshot {metrics['main_snapshot_id']}"
        if metrics["published"]
        else "nothing to publish"
    )
    seconds = sum(v for k, v in metrics.items() if k.endswith("_s"))
    console.print(
        f"{metrics['timeframe']}: read {metrics['trades_read']} trades "
        f"({metrics['new_trades']} new{before_lookback}), {metrics['windows_recomputed']} "
        f"candles recomputed: {metrics['inserted']} inserted, {metrics['updated']} updated, "
        f"{metrics['unchanged']} unchanged; {checked}{outcome} in {seconds:.1f} s"
    )


@app.command("run")
@_friendly_errors
def run_command(
    tf: Annotated[str, typer.Argument(help="1m, 5m, 30m, 1h or 1d")],
    at: Annotated[
        str | None, typer.Option("--at", help="Reference time (ISO-8601, default now)")
    ] = None,
    lookback: Annotated[
        str | None, typer.Option(help="e.g. 10m, 2h (default: the timeframe's)")
    ] = None,
) -> None:
    """Run the timeframe's flow now: generate -> validate -> publish."""
    tf_ = timeframe(tf)
    when = parse_time(at) if at else None
    minutes = parse_duration(lookback) / timedelta(minutes=1) if lookback else None
    flows = _candle_flows()
    _print_metrics(flows.FLOWS[tf_.name](at=when, lookback_minutes=minutes))


def _backfill_state(settings: Settings, tf: Timeframe, chunks: list[jobs.Range]) -> Path:
    first, last = chunks[0].start, chunks[-1].end
    name = f"{tf.name}_{first:%Y%m%dT%H%M}_{last:%Y%m%dT%H%M}_{len(chunks)}.json"
    return settings.data_dir.resolve() / "backfills" / name


@app.command("backfill")
@_friendly_errors
def backfill_command(
    tf: Annotated[str, typer.Argument(help="1m, 5m, 30m, 1h or 1d")],
    start: Annotated[str, typer.Option(help="ISO-8601, inclusive")],
    end: Annotated[str, typer.Option(help="ISO-8601, exclusive")],
    chunk: Annotated[str, typer.Option(help="Size of one bounded chunk")] = "1d",
) -> None:
    """Recompute every window in [start, end) chunk by chunk; rerun to resume.

    Each chunk is one flow run (audited and published on its own). Finished chunks are
    recorded under <data dir>/backfills/, so the same command after an interruption continues
    with the first unfinished chunk.
    """
    settings = Settings()
    tf_ = timeframe(tf)
    chunks = jobs.backfill_ranges(tf_, parse_time(start), parse_time(end), parse_duration(chunk))
    state = _backfill_state(settings, tf_, chunks)
    done: set[str] = set(json.loads(state.read_text())["done"]) if state.exists() else set()
    todo = [c for c in chunks if c.start.isoformat() not in done]
    if done:
        console.print(f"resuming: {len(chunks) - len(todo)} of {len(chunks)} chunks already done")
    flows = _candle_flows()
    state.parent.mkdir(parents=True, exist_ok=True)
    with Progress(console=console) as progress:
        bar = progress.add_task(
            f"{tf_} backfill", total=len(chunks), completed=len(chunks) - len(todo)
        )
        for window in todo:
            metrics = flows.FLOWS[tf_.name](window_start=window.start, window_end=window.end)
            done.add(window.start.isoformat())
            state.write_text(json.dumps({"done": sorted(done)}))
            progress.advance(bar)
            progress.console.print(
                f"{window.start:%Y-%m-%d %H:%M}..{window.end:%Y-%m-%d %H:%M}: "
                f"{metrics['trades_read']} trades, {metrics['inserted']} inserted, "
                f"{metrics['updated']} updated, {metrics['unchanged']} unchanged"
            )
    console.print(f"{tf_} backfill of {len(chunks)} chunks complete")


@app.command("serve")
@_friendly_errors
def serve_command() -> None:
    """Serve the five scheduled deployments (Prefect serve(), no separate worker)."""
    from prefect import serve

    flows = _candle_flows()
    for spec in flows.TIMEFRAME_FLOWS:
        console.print(f"{spec.flow_name}: cron '{spec.cron}' UTC, one run at a time")
    serve(*flows.deployments())


@app.command("status")
@_friendly_errors
def status_command() -> None:
    """Newest published candle and last flow run of every timeframe."""
    settings = Settings()
    tables = pipeline.tables_for(settings)
    rows: dict[str, list[str]] = {}
    with _session(settings) as spark:
        for tf in TIMEFRAMES.values():
            name = tables.candles(tf)
            newest = spark.read.table(name).agg(F.max("window_start").alias("w")).collect()[0]["w"]
            snapshot = jobs.main_snapshot_id(spark, name)
            rows[tf.name] = [
                f"{newest:%Y-%m-%d %H:%M}" if newest else "-",
                str(snapshot or "-"),
                str(jobs.watermark(spark, name) or "-"),
            ]
    for name, last in _last_flow_runs().items():
        rows[name] += last
    table = Table(title="OHLCV status")
    for column in (
        "timeframe",
        "newest published window (UTC)",
        "main snapshot",
        "trades snapshot processed",
        "last run",
        "state",
    ):
        table.add_column(column)
    for name, values in rows.items():
        table.add_row(name, *values)
    console.print(table)


def _last_flow_runs() -> dict[str, list[str]]:
    """Start time and state of the newest run of each timeframe's flow (Prefect API)."""
    flows = _candle_flows()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    out: dict[str, list[str]] = {}
    with get_client(sync_client=True) as client:
        for spec in flows.TIMEFRAME_FLOWS:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[spec.flow_name])),
                sort=FlowRunSort.START_TIME_DESC,
                limit=1,
            )
            if runs and runs[0].start_time:
                state = runs[0].state.name if runs[0].state and runs[0].state.name else "-"
                out[spec.timeframe] = [f"{runs[0].start_time:%Y-%m-%d %H:%M:%S}", state]
            else:
                out[spec.timeframe] = ["never", "-"]
    return out


def summary_table(spark: SparkSession, tables: Tables, tf: Timeframe) -> Table:
    """Per-symbol summary of one candle table."""
    rows = (
        spark.read.table(tables.candles(tf))
        .groupBy("symbol")
        .agg(
            F.count(F.lit(1)).alias("candles"),
            F.date_format(F.min("window_start"), "yyyy-MM-dd HH:mm").alias("first"),
            F.date_format(F.max("window_start"), "yyyy-MM-dd HH:mm").alias("last"),
            F.sum("trade_count").alias("trades"),
            F.max_by("close", "window_start").alias("last_close"),
        )
        .orderBy("symbol")
        .collect()
    )
    table = Table(title=f"{tables.candles(tf)}")
    for column in (
        "symbol",
        "candles",
        "first window (UTC)",
        "last window (UTC)",
        "trades",
        "last close",
    ):
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
    return table


@app.command("demo")
@_friendly_errors
def demo_command(
    hours: Annotated[float, typer.Option(help="Hours of demo trades, ending now")] = 48,
) -> None:
    """Start the local stack, ingest demo trades, run all five timeframes, print a summary."""
    settings = Settings()
    started = time.monotonic()
    status = stack.up(settings)
    console.print(f"Spark Connect {status.describe()} ({time.monotonic() - started:.1f} s)")
    _print_ingest(_ingest_demo(settings, hours, 6, 20, 7))
    tables = pipeline.tables_for(settings)
    flows = _candle_flows()
    for spec in flows.TIMEFRAME_FLOWS:  # shortest first: each reconciles with the one before
        _print_metrics(flows.FLOWS[spec.timeframe]())
    with _session(settings) as spark:
        for tf in TIMEFRAMES.values():
            console.print(summary_table(spark, tables, tf))
    console.print(f"data docs: {data_docs_index(settings.gx_root)}")


@app.command("docs")
@_friendly_errors
def docs_command(
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the site in the default browser")
    ] = False,
) -> None:
    """Build the GX data docs site (suites and validation results) and print its path."""
    index = build_data_docs(Settings().gx_root)
    console.print(str(index))
    if open_browser:
        webbrowser.open(index.as_uri())


def main() -> None:
    app()
