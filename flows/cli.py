"""The ``ohlcv`` command line: thin wiring of settings, infra and job functions."""

from __future__ import annotations

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
from rich.table import Table

from expectations.validation import ValidationFailed, build_data_docs, data_docs_index
from flows import pipeline
from infra import stack
from infra.artifacts import ArtifactError, ensure_artifacts
from infra.catalog import open_catalog
from infra.session import ConnectError, connect
from settings import Settings
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


def _tables(settings: Settings) -> Tables:
    return Tables(settings.catalog_name, settings.namespace)


@contextmanager
def _session(settings: Settings) -> Iterator[SparkSession]:
    spark = connect(settings)
    try:
        yield spark
    finally:
        spark.stop()


# stack ---------------------------------------------------------------------------------------


@stack_app.command("up")
@_friendly_errors
def stack_up() -> None:
    """Start the local Spark Connect server (reuses a running one)."""
    started = time.monotonic()
    status = stack.up(Settings())
    console.print(f"Spark Connect {status.describe()} ({time.monotonic() - started:.1f} s)")


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


def _print_run(result: pipeline.PipelineResult, seconds: float) -> None:
    run = result.run
    if result.published:
        outcome = f"published snapshot {result.main_after}"
    else:
        outcome = "nothing to publish"
    reports = result.validation.reports
    checked = ", ".join(
        f"{r.checkpoint} {r.evaluated - len(r.failures)}/{r.evaluated} passed" for r in reports
    )
    before_lookback = f", {run.late_trades} before the lookback" if run.late_trades else ""
    console.print(
        f"{run.timeframe}: read {run.trades_read} trades ({run.new_trades} new{before_lookback}), "
        f"{run.windows_recomputed} candles recomputed: {run.inserted} inserted, "
        f"{run.updated} updated, {run.unchanged} unchanged; "
        + (f"validated ({checked}); " if checked else "")
        + f"{outcome} in {seconds:.1f} s"
    )
    for note in result.validation.notes:
        console.print(f"  note: {note}")


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
    """Recompute the lookback windows and every window touched by new trades, now."""
    settings = Settings()
    tf_ = timeframe(tf)
    now = parse_time(at) if at else None
    span = parse_duration(lookback) if lookback else None
    with _session(settings) as spark:
        started = time.monotonic()
        result = pipeline.run_timeframe(spark, settings, tf_, now=now, lookback=span)
        _print_run(result, time.monotonic() - started)


@app.command("backfill")
@_friendly_errors
def backfill_command(
    tf: Annotated[str, typer.Argument(help="1m, 5m, 30m, 1h or 1d")],
    start: Annotated[str, typer.Option(help="ISO-8601, inclusive")],
    end: Annotated[str, typer.Option(help="ISO-8601, exclusive")],
    chunk: Annotated[str, typer.Option(help="Size of one bounded chunk")] = "1d",
) -> None:
    """Recompute every window in [start, end), chunk by chunk."""
    settings = Settings()
    tf_ = timeframe(tf)
    with _session(settings) as spark:
        started = time.monotonic()
        for result in pipeline.backfill_timeframe(
            spark,
            settings,
            tf_,
            parse_time(start),
            parse_time(end),
            chunk=parse_duration(chunk),
        ):
            _print_run(result, time.monotonic() - started)
            started = time.monotonic()


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
    tables = _tables(settings)
    with _session(settings) as spark:
        for tf in TIMEFRAMES.values():  # shortest first: each reconciles with the one before
            started = time.monotonic()
            _print_run(pipeline.run_timeframe(spark, settings, tf), time.monotonic() - started)
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
