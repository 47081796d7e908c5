"""The commands that write: `ingest`, `demo-data`, `run`, `backfill`, `maintain`, `serve`,
`status` and `demo`.

Spark, Iceberg, Prefect and Great Expectations take seconds (GX alone ~15 s on a loaded
machine) to import: each command imports what it uses, so `ohlcv --help` and
`ohlcv stack status` start at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli import output
from cli.app import app, settings_of
from cli.errors import friendly_errors
from cli.output import console
from cli.params import (
    BACKFILL_TIMEFRAME_HELP,
    TIMEFRAME_HELP,
    backfill_timeframes,
    chunk_size,
    duration,
    instant,
    known_tables,
    parse_duration,
    usage,
)
from cli.requires import flow_context, prepare_tables
from cli.stack import start_stack
from core.feeds import FORMATS
from core.time import parse_instant
from core.timeframes import TIMEFRAMES, timeframe
from infra import prefect_server

if TYPE_CHECKING:
    from ingest import IngestResult
    from settings import Settings


@app.command("ingest")
@friendly_errors
def ingest_command(
    ctx: typer.Context,
    path: Annotated[
        str | None,
        typer.Argument(
            help="A trades file, or a landing zone (a directory or s3://bucket/prefix) to run "
            "one pass over (default: OHLCV_LANDING)",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help=f"The files' format: {', '.join(FORMATS)} (default: detected)"
        ),
    ] = None,
    exchange: Annotated[
        str | None,
        typer.Option(help="Exchange of a Binance file's rows (default: binance, binance-futures)"),
    ] = None,
    status: Annotated[
        bool,
        typer.Option("--status", help="List the landing zone's pending, ingested and failed files"),
    ] = False,
) -> None:
    """Validate trade files and append them to `trades` (rejects go to `trades_rejected`).

    A file (the project's Parquet/CSV, Binance trades/aggTrades/futures trades, Tardis trades;
    plain, .gz or .zip) is ingested as it is. A directory or s3:// prefix is a landing zone:
    every file not ingested yet, oldest first, each exactly once (see docs/feeds.md).
    """
    if fmt is not None and fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r}: use one of {', '.join(FORMATS)}", param_hint="--format")
    settings = settings_of(ctx)
    local = Path(path) if path and not path.startswith("s3://") else None
    if local is not None and local.is_file() and not status:
        _ingest_one_file(settings, local, fmt, exchange)
        return
    if local is not None and not local.exists():
        raise typer.BadParameter(f"{path!r} does not exist", param_hint="PATH")
    from flows.trades_ingest import landing_pass, landing_states

    prepare_tables(settings)
    if status:
        output.print_landing_status(landing_states(settings, path))
        return
    with _trades_writer(settings):
        result = landing_pass(settings, path, fmt=fmt, exchange=exchange, lock=False)
    output.print_landing_pass(result)


def _ingest_one_file(settings: Settings, path: Path, fmt: str | None, exchange: str | None) -> None:
    from infra.catalog import open_catalog
    from ingest import ingest, ingest_file
    from ingest.formats import IDS_MAY_BE_MISSING, read_feed

    prepare_tables(settings)
    catalog = open_catalog(settings)
    with _trades_writer(settings):
        if path.suffix.lower() in (".parquet", ".pq") and fmt in (None, "own"):
            output.print_ingest(ingest_file(catalog, settings.namespace, path))
            return
        feed = read_feed(lambda: path.open("rb"), path.name, fmt, exchange)
        synthesize = feed.format in IDS_MAY_BE_MISSING
        done = ingest(
            catalog,
            settings.namespace,
            feed.table,
            source=str(path),
            synthesize_missing_ids=synthesize,
        )
    output.print_ingest(done)


@contextmanager
def _trades_writer(settings: Settings) -> Iterator[None]:
    """One writer of ``trades`` for the block: its slot on the Prefect server when one
    answers (where the slot lives, and where a scheduled pass runs), with the block running
    against that server; with none, this machine's lock file (:mod:`flows.writers`)."""
    from core.tables import TRADES
    from flows.writers import local_writer, one_writer

    try:
        url = prefect_server.api_url(settings)
    except prefect_server.PrefectUnavailable:
        with local_writer(settings, TRADES):
            yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}), one_writer(settings, TRADES):
        yield


@app.command("demo-data")
@friendly_errors
def demo_data_command(
    ctx: typer.Context,
    hours: Annotated[float, typer.Option(help="How many hours of trades, ending now")] = 48,
    symbols: Annotated[int, typer.Option(help="How many symbols")] = 6,
    trades_per_minute: Annotated[float, typer.Option(help="Average per symbol")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same trades")] = 7,
) -> None:
    """Generate realistic synthetic trades (with late, duplicate and bad rows) and ingest them."""
    output.print_ingest(_ingest_demo(settings_of(ctx), hours, symbols, trades_per_minute, seed))


def _ingest_demo(
    settings: Settings, hours: float, symbols: int, per_minute: float, seed: int
) -> IngestResult | None:
    """Demo trades for the last ``hours``, continuing the feed already stored."""
    from infra.catalog import open_catalog
    from ingest.demo import ingest_demo_feed

    prepare_tables(settings)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    with console.status(f"generating and ingesting up to {hours:g} hours of demo trades ..."):
        result = ingest_demo_feed(
            open_catalog(settings),
            settings.namespace,
            end=end,
            hours=hours,
            symbols=symbols,
            trades_per_minute=per_minute,
            seed=seed,
        )
    if result is None:
        console.print(f"no new demo trades: the table already holds trades up to {end:%H:%M} UTC")
    return result


@app.command("run")
@friendly_errors
def run_command(
    ctx: typer.Context,
    tf: Annotated[str, typer.Argument(help=TIMEFRAME_HELP, callback=usage(timeframe))],
    at: Annotated[str | None, instant("Reference time (ISO-8601, default now)", "--at")] = None,
    lookback: Annotated[str | None, duration("e.g. 10m, 2h (default: the timeframe's)")] = None,
) -> None:
    """Run the timeframe's flow now: generate -> validate -> publish."""
    tf_ = timeframe(tf)
    when = parse_instant(at) if at else None
    minutes = parse_duration(lookback) / timedelta(minutes=1) if lookback else None
    with flow_context(settings_of(ctx)):
        from flows.candle_flows import FLOWS

        output.print_metrics(FLOWS[tf_.name](at=when, lookback_minutes=minutes))


@app.command("backfill")
@friendly_errors
def backfill_command(
    ctx: typer.Context,
    tf: Annotated[
        str, typer.Argument(help=BACKFILL_TIMEFRAME_HELP, callback=usage(backfill_timeframes))
    ],
    start: Annotated[str, instant("ISO-8601, inclusive")],
    end: Annotated[str, instant("ISO-8601, exclusive")],
    chunk: Annotated[str | None, duration("Length of one chunk (default 1d)")] = None,
    chunk_trades: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Size chunks by trades instead: about this many each (whole hours, or whole "
            "windows of an hour or more, never split)",
        ),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Recompute every chunk, even finished ones")
    ] = False,
) -> None:
    """Recompute every window in [start, end) chunk by chunk; rerun to resume.

    Each chunk is one flow run (audited and published on its own). Finished chunks are
    recorded under <data dir>/backfills/, so the same command after an interruption continues
    with the first unfinished chunk; --restart recomputes them all.
    """
    settings = settings_of(ctx)
    size = chunk_size(chunk, chunk_trades)
    with flow_context(settings):
        from flows.backfill import run_backfill

        backfill = run_backfill(
            settings,
            backfill_timeframes(tf),
            parse_instant(start),
            parse_instant(end),
            chunk=size,
            chunk_trades=chunk_trades,
            restart=restart,
        )
        output.print_backfill(backfill)


@app.command("maintain")
@friendly_errors
def maintain_command(
    ctx: typer.Context,
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table",
            help="Only this table (repeatable; default: every table)",
            callback=known_tables,
        ),
    ] = None,
) -> None:
    """Expire old snapshots, compact small files, remove orphan files (the daily deployment)."""
    from flows.maintenance import metrics_rows, ohlcv_maintenance_flow
    from spark_jobs.maintenance import chosen_tables

    chosen_tables(table)  # unknown names: a usage error before any flow run
    with flow_context(settings_of(ctx)):  # every table: Prefect's history is pruned too
        rows = metrics_rows(ohlcv_maintenance_flow(tables=table or None))
    output.print_rows(rows, "OHLCV table maintenance")


@app.command("serve")
@friendly_errors
def serve_command(ctx: typer.Context) -> None:
    """Serve every scheduled deployment in this process (Prefect serve()); schedules stay
    active when it stops."""
    from flows.automations import apply_automations
    from flows.deployments import deployments
    from flows.serving import serve

    settings = settings_of(ctx)
    with flow_context(settings):  # a stack that is down: one line, nothing else
        served = deployments()
        output.print_automations(apply_automations(settings, served))
        for deployment in served:
            cron = deployment.schedules[0].schedule.cron
            console.print(f"{deployment.flow_name}: cron '{cron}' UTC, one run at a time")
        console.print(f"landing zone: {settings.landing or 'none (OHLCV_LANDING is not set)'}")
        serve(*served)


@app.command("status")
@friendly_errors
def status_command(ctx: typer.Context) -> None:
    """Newest published candle and last flow run of every timeframe."""
    from flows.status import status_rows

    output.print_status(status_rows(settings_of(ctx)))


@app.command("demo")
@friendly_errors
def demo_command(
    ctx: typer.Context,
    hours: Annotated[float, typer.Option(help="Hours of demo trades, ending now")] = 48,
) -> None:
    """Start the local stack, ingest demo trades, run all five timeframes, print a summary."""
    from expectations.project import data_docs_index
    from flows import pipeline, status
    from infra.session import session

    settings = settings_of(ctx)
    start_stack(settings)
    output.print_ingest(_ingest_demo(settings, hours, 6, 20, 7))
    tables = pipeline.tables_for(settings)
    with flow_context(settings):
        prefect_ui = prefect_server.api_url(settings).removesuffix("/api")
        from flows.candle_flows import FLOWS

        for name in TIMEFRAMES:  # shortest first: each reconciles with the one before
            output.print_metrics(FLOWS[name]())
    with session(settings) as spark:
        for tf in TIMEFRAMES.values():
            output.print_summary(status.symbol_summary(spark, tables, tf), tables.candles(tf))
    output.print_next_steps(prefect_ui, data_docs_index(settings.gx_root))
