"""The ``ohlcv`` command line: parse, call, print. The logic lives beside what it belongs to.

Settings are built once per invocation (the callback) and handed to every command.
"""

from __future__ import annotations

import errno
import re
import sys
import time
import webbrowser
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from core.ranges import backfill_ranges
from core.time import parse_instant
from core.timeframes import TIMEFRAMES, timeframe
from infra import prefect_server, stack
from settings import CatalogType, Settings, StorageType

RUN_LOGGING = Path(__file__).with_name("run_logging.yml")

# Spark, Iceberg, Prefect and Great Expectations take seconds (GX alone ~15 s on a loaded
# machine) to import: each command imports what it uses, so `ohlcv --help` and
# `ohlcv stack status` start at once.
if TYPE_CHECKING:
    from types import ModuleType

    from core.ranges import Range
    from core.timeframes import Timeframe
    from flows.pipeline import RunMetrics
    from ingest import IngestResult

# Plain click help and usage errors: rich panels mislabel flags as `<bool>` and box errors.
app = typer.Typer(
    help="Exact OHLCV candles from Iceberg trades over Spark Connect.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
stack_app = typer.Typer(
    help="The local Spark Connect and Prefect servers and the Iceberg catalog.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(stack_app, name="stack")
console = Console()
# Errors are one line each, however narrow the terminal (or the pipe) is.
err = Console(stderr=True, soft_wrap=True)

F_ = TypeVar("F_", bound=Callable[..., Any])
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@app.callback()
def _main(ctx: typer.Context) -> None:
    """Exact OHLCV candles from Iceberg trades over Spark Connect."""
    ctx.obj = Settings()


def _settings(ctx: typer.Context) -> Settings:
    """The invocation's settings (built once by the callback)."""
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings), "the app callback builds the settings"
    return settings


def _friendly_errors(func: F_) -> F_:
    """Turn the errors a user can act on into one clear line and exit code 1 (usage errors
    are click's: exit code 2)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as e:
            known = _one_line(e)
            if known is None:
                raise
            code, line = known
            err.print(line)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def _raised_by(e: Exception, module: str, *names: str) -> bool:
    """Whether ``e`` is one of the classes ``names`` of ``module``; a module never imported
    cannot have raised anything, and is not imported just to find out."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(e, tuple(getattr(loaded, n) for n in names))


@contextmanager
def _flow_context(settings: Settings) -> Iterator[None]:
    """Where flow runs go: fail at once, in one line, when one could not work (no Spark
    Connect server, a URL the client cannot use, no Prefect server), else run the block
    against the user's PREFECT_API_URL or the local Prefect server. Without the checks, a flow
    run would start, record a failure and print Prefect's traceback first."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from infra.session import probe

    probe(settings)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url(settings)}):
        yield


def _one_line(e: Exception) -> tuple[int, str] | None:
    """(exit code, message) for an expected failure; None for a bug (its traceback shows)."""
    if _raised_by(e, "expectations.validation", "ValidationFailed"):
        return 1, f"[red]validation failed, main unchanged:[/red] {e}"
    if (
        isinstance(e, (stack.StackError, prefect_server.PrefectUnavailable, ValueError))
        or _raised_by(e, "infra.session", "ConnectError")
        or _raised_by(e, "infra.artifacts", "ArtifactError")
        or _raised_by(e, "ingest", "SchemaError")
    ):
        return 1, f"[red]error:[/red] {e}"
    if _raised_by(e, "pyspark.errors", "PySparkException"):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return 1, f"[red]Spark error:[/red] {first}"
    if isinstance(e, OSError):
        return 1, f"[red]error:[/red] {_os_error(e)}"
    return None


def _os_error(e: OSError) -> str:
    """One line for a failure of the machine (disk, permissions, a damaged file)."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno == errno.ENOSPC:
        return (
            f"no space left on device{where}: free some space, then run the same command "
            "again (ingestion and candle runs are safe to repeat)"
        )
    if isinstance(e, PermissionError):
        return f"permission denied{where}: give this user access, or point OHLCV_DATA_DIR elsewhere"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{first}{where if e.filename and str(e.filename) not in first else ''}"


def _usage(parse: Callable[[str], Any]) -> Callable[[str | None], str | None]:
    """A parameter callback: a value ``parse`` refuses is a usage error (exit code 2, with the
    command's usage), like every other wrong argument, not a runtime error."""

    def check(value: str | None) -> str | None:
        if value is not None:
            try:
                parse(value)
            except ValueError as e:
                raise typer.BadParameter(str(e)) from None
        return value

    return check


def parse_duration(text: str) -> timedelta:
    """'90s', '10m', '2h', '2d' -> timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(
            f"duration {text!r} is not understood: use a number and s, m, h or d (e.g. 10m)"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _prepare_tables(settings: Settings) -> None:
    """Create the namespace and tables the commands need, if missing."""
    from core.tables import ensure_tables
    from infra.catalog import open_catalog

    ensure_tables(open_catalog(settings), settings.namespace)


# stack ---------------------------------------------------------------------------------------


@stack_app.command("up")
@_friendly_errors
def stack_up(
    ctx: typer.Context,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Also start a standalone master and N workers on loopback for the server "
            "(default: OHLCV_WORKERS, 0 = local mode)"
        ),
    ] = None,
    catalog: Annotated[
        CatalogType | None,
        typer.Option(
            help="The Iceberg catalog (default: OHLCV_CATALOG_TYPE); rest without "
            "OHLCV_CATALOG_URI also starts a local REST catalog"
        ),
    ] = None,
    storage: Annotated[
        StorageType | None,
        typer.Option(
            help="The warehouse (default: OHLCV_STORAGE); s3 without OHLCV_S3_ENDPOINT also "
            "starts a local S3 server"
        ),
    ] = None,
) -> None:
    """Start the local Spark Connect and Prefect servers (reuses running ones)."""
    settings = _settings(ctx)
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    chosen = {"catalog_type": catalog, "storage": storage}
    settings = settings.model_copy(update={k: v for k, v in chosen.items() if v is not None})
    _start_stack(settings)
    if catalog is not None or storage is not None:
        console.print(
            "the other commands use the same shape when it is in their settings: export "
            f"OHLCV_CATALOG_TYPE={settings.catalog_type.value} "
            f"OHLCV_STORAGE={settings.storage.value}"
        )
    cluster = stack.cluster_pids(settings)
    if cluster["workers"]:
        console.print(
            f"standalone cluster: master spark://127.0.0.1:{settings.master_port} "
            f"(UI http://127.0.0.1:{settings.master_ui_port}), {len(cluster['workers'])} workers"
        )


def _start_stack(settings: Settings) -> None:
    started = time.monotonic()
    with console.status("starting the Spark Connect server ..."):
        running = stack.up(settings)
        _prepare_tables(settings)
    _print_storage_and_catalog(settings)
    console.print(f"Spark Connect {running.describe()} ({time.monotonic() - started:.1f} s)")
    theirs = prefect_server.user_url()
    if theirs:
        console.print(f"Prefect: PREFECT_API_URL={theirs} (no local Prefect server started)")
        return
    started = time.monotonic()
    with console.status("starting the Prefect server ..."):
        prefect = prefect_server.up(settings)
    console.print(f"Prefect {prefect.describe()} ({time.monotonic() - started:.1f} s)")


def _print_storage_and_catalog(settings: Settings) -> None:
    """Status lines of the local S3 server and REST catalog (when configured or running)."""
    from infra import object_store, rest_catalog

    s3, rest = object_store.status(settings), rest_catalog.status(settings)
    if settings.local_s3 or s3.running:
        console.print(f"S3 {s3.describe()}")
    if settings.local_rest or rest.running:
        console.print(f"REST catalog {rest.describe()}")


@stack_app.command("down")
@_friendly_errors
def stack_down(ctx: typer.Context) -> None:
    """Stop the local Spark Connect and Prefect servers."""
    settings = _settings(ctx)
    console.print(f"Spark Connect {stack.down(settings).describe()}")
    _print_storage_and_catalog(settings)
    console.print(f"Prefect {prefect_server.down(settings).describe()}")


@stack_app.command("status")
@_friendly_errors
def stack_status(ctx: typer.Context) -> None:
    """Show whether the local servers run, their URLs and log files."""
    settings = _settings(ctx)
    _print_storage_and_catalog(settings)
    console.print(f"Spark Connect {stack.status(settings).describe()}")
    console.print(f"Prefect {prefect_server.status(settings).describe()}")


@app.command()
@_friendly_errors
def setup(
    ctx: typer.Context,
    all_shapes: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also fetch the local S3 server's and REST catalog's jars (about 200 MB), "
            "whatever the settings use",
        ),
    ] = False,
) -> None:
    """Fetch the pinned JVM artifacts the configured stack uses (done by `stack up` too)."""
    from infra.artifacts import (
        REST_CATALOG_JARS,
        S3PROXY_JARS,
        ensure_artifacts,
        ensure_jar_set,
        server_artifacts,
    )

    settings = _settings(ctx)
    cache = settings.jar_cache_dir
    for path in ensure_artifacts(cache, server_artifacts(s3=all_shapes or settings.uses_s3)):
        console.print(f"ok {path}")
    wanted = [(S3PROXY_JARS, settings.local_s3), (REST_CATALOG_JARS, settings.local_rest)]
    for jar_set, used in wanted:  # the local S3 server's and REST catalog's classpaths
        if all_shapes or used:
            jars = ensure_jar_set(cache, jar_set)
            console.print(f"ok {jar_set.name}: {len(jars)} jars in {jars[0].parent}")


# ingestion -----------------------------------------------------------------------------------


def _print_ingest(result: IngestResult | None) -> None:
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


@app.command("ingest")
@_friendly_errors
def ingest_command(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Parquet or CSV file")],
) -> None:
    """Validate a file of trades and append it to `trades` (rejects go to `trades_rejected`)."""
    from core.tables import ensure_tables
    from infra.catalog import open_catalog
    from ingest import ingest_file

    settings = _settings(ctx)
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    _print_ingest(ingest_file(catalog, settings.namespace, path))


@app.command("demo-data")
@_friendly_errors
def demo_data_command(
    ctx: typer.Context,
    hours: Annotated[float, typer.Option(help="How many hours of trades, ending now")] = 48,
    symbols: Annotated[int, typer.Option(help="How many symbols")] = 6,
    trades_per_minute: Annotated[float, typer.Option(help="Average per symbol")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same trades")] = 7,
) -> None:
    """Generate realistic synthetic trades (with late, duplicate and bad rows) and ingest them."""
    _print_ingest(_ingest_demo(_settings(ctx), hours, symbols, trades_per_minute, seed))


def _ingest_demo(
    settings: Settings, hours: float, symbols: int, per_minute: float, seed: int
) -> IngestResult | None:
    """Demo trades for the last ``hours``, continuing the feed already stored."""
    from core.tables import ensure_tables
    from infra.catalog import open_catalog
    from ingest.demo import ingest_demo_feed

    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    with console.status(f"generating and ingesting up to {hours:g} hours of demo trades ..."):
        result = ingest_demo_feed(
            catalog,
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


# candle jobs ---------------------------------------------------------------------------------


def _candle_flows() -> ModuleType:
    """The Prefect flows, imported on first use (Prefect takes a while to import)."""
    from flows import candle_flows

    return candle_flows


def _print_metrics(metrics: RunMetrics) -> None:
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


@app.command("run")
@_friendly_errors
def run_command(
    ctx: typer.Context,
    tf: Annotated[str, typer.Argument(help="1m, 5m, 30m, 1h or 1d", callback=_usage(timeframe))],
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Reference time (ISO-8601, default now)",
            callback=_usage(parse_instant),
        ),
    ] = None,
    lookback: Annotated[
        str | None,
        typer.Option(
            help="e.g. 10m, 2h (default: the timeframe's)", callback=_usage(parse_duration)
        ),
    ] = None,
) -> None:
    """Run the timeframe's flow now: generate -> validate -> publish."""
    tf_ = timeframe(tf)
    when = parse_instant(at) if at else None
    minutes = parse_duration(lookback) / timedelta(minutes=1) if lookback else None
    with _flow_context(_settings(ctx)):
        flows = _candle_flows()
        _print_metrics(flows.FLOWS[tf_.name](at=when, lookback_minutes=minutes))


@app.command("backfill")
@_friendly_errors
def backfill_command(
    ctx: typer.Context,
    tf: Annotated[str, typer.Argument(help="1m, 5m, 30m, 1h or 1d", callback=_usage(timeframe))],
    start: Annotated[str, typer.Option(help="ISO-8601, inclusive", callback=_usage(parse_instant))],
    end: Annotated[str, typer.Option(help="ISO-8601, exclusive", callback=_usage(parse_instant))],
    chunk: Annotated[
        str | None,
        typer.Option(help="Length of one chunk (default 1d)", callback=_usage(parse_duration)),
    ] = None,
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
    settings = _settings(ctx)
    tf_ = timeframe(tf)
    if chunk is not None and chunk_trades is not None:
        raise typer.BadParameter(
            f"--chunk {chunk} and --chunk-trades {chunk_trades} both size the chunks: give one"
        )
    size = parse_duration(chunk or "1d")
    with _flow_context(settings):
        _backfill(
            settings, tf_, parse_instant(start), parse_instant(end), size, chunk_trades, restart
        )


def _backfill(
    settings: Settings,
    tf_: Timeframe,
    start: datetime,
    end: datetime,
    size: timedelta,
    chunk_trades: int | None,
    restart: bool,
) -> None:
    from core.tables import TRADES, ensure_tables
    from flows.backfill import BackfillProgress
    from flows.pipeline import backfill_requests
    from infra.catalog import open_catalog

    chunks = backfill_ranges(tf_, start, end, size)
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    pinned = catalog.load_table((settings.namespace, TRADES)).current_snapshot()
    candles = catalog.load_table((settings.namespace, tf_.table))
    progress_file = BackfillProgress.load(
        settings,
        candles,
        tf_,
        chunks,
        size,
        pinned.snapshot_id if pinned else None,
        restart=restart,
        chunk_trades=chunk_trades,
    )
    if chunk_trades is not None and progress_file.trades_snapshot_id is not None:
        # Planned on the pinned snapshot, so a resumed backfill cuts the very same chunks.
        chunks = _chunks_by_trades(
            settings, tf_, chunks, progress_file.trades_snapshot_id, chunk_trades
        )
    requests = {
        r.window_range: r for r in backfill_requests(chunks, progress_file.trades_snapshot_id)
    }
    todo = progress_file.todo(chunks)
    if len(todo) < len(chunks):
        console.print(
            f"resuming: {len(chunks) - len(todo)} of {len(chunks)} chunks already done "
            "(--restart recomputes them)"
        )
    flows = _candle_flows()
    with Progress(console=console) as progress:
        bar = progress.add_task(
            f"{tf_} backfill", total=len(chunks), completed=len(chunks) - len(todo)
        )
        for window in todo:
            request = requests[window]
            metrics = flows.FLOWS[tf_.name](
                window_start=window.start,
                window_end=window.end,
                trades_snapshot_id=request.trades_snapshot_id,
                backfill_start=request.completes.start if request.completes else None,
            )
            progress_file.mark_done(window, metrics.main_snapshot_id)
            progress.advance(bar)
            run = metrics.run
            progress.console.print(
                f"{window.start:%Y-%m-%d %H:%M}..{window.end:%Y-%m-%d %H:%M}: "
                f"{run.trades_read} trades, {run.inserted} inserted, "
                f"{run.updated} updated, {run.unchanged} unchanged"
            )
    console.print(f"{tf_} backfill of {len(chunks)} chunks complete")


def _chunks_by_trades(
    settings: Settings, tf_: Timeframe, chunks: list[Range], pinned: int, chunk_trades: int
) -> list[Range]:
    from core.tables import Tables
    from infra.session import connect
    from spark_jobs.plan import plan_chunks

    spark = connect(settings)
    try:
        tables = Tables(settings.catalog_name, settings.namespace)
        planned = plan_chunks(
            spark, tables, tf_, chunks[0].start, chunks[-1].end, pinned, chunk_trades
        )
    finally:
        spark.stop()
    return [c.window_range for c in planned]


def _known_tables(names: list[str] | None) -> list[str] | None:
    from spark_jobs.maintenance import chosen_tables

    try:
        chosen_tables(names)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    return names


@app.command("maintain")
@_friendly_errors
def maintain_command(
    ctx: typer.Context,
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table",
            help="Only this table (repeatable; default: every table)",
            callback=_known_tables,
        ),
    ] = None,
) -> None:
    """Expire old snapshots, compact small files, remove orphan files (the daily deployment)."""
    from flows.maintenance import metrics_rows, ohlcv_maintenance_flow
    from spark_jobs.maintenance import chosen_tables

    names = chosen_tables(table)
    with _flow_context(_settings(ctx)):
        rows = metrics_rows(ohlcv_maintenance_flow(tables=names))
    out = Table(title="OHLCV table maintenance")
    for column in rows[0]:
        out.add_column(column)
    for row in rows:
        out.add_row(*(str(v) for v in row.values()))
    console.print(out)


@app.command("serve")
@_friendly_errors
def serve_command(ctx: typer.Context) -> None:
    """Serve the scheduled deployments: five timeframes and maintenance (Prefect serve())."""
    from prefect import serve

    from flows.maintenance import CRON, FLOW_NAME, maintenance_deployment

    flows = _candle_flows()
    for tf in TIMEFRAMES.values():
        console.print(f"{tf.flow_name}: cron '{tf.cron}' UTC, one run at a time")
    console.print(f"{FLOW_NAME}: cron '{CRON}' UTC, one run at a time")
    with _flow_context(_settings(ctx)):
        serve(*flows.deployments(), maintenance_deployment())


@app.command("status")
@_friendly_errors
def status_command(ctx: typer.Context) -> None:
    """Newest published candle and last flow run of every timeframe."""
    from flows import pipeline, status
    from infra.session import session

    settings = _settings(ctx)
    with session(settings) as spark:
        rows = status.published_status(spark, pipeline.tables_for(settings))
    for name, last in status.last_flow_runs().items():
        rows[name] += last
    table = Table(title="OHLCV status")
    for column in (
        "timeframe",
        "newest published window (UTC)",
        "main snapshot",
        "trades snapshot processed",
        "last finished run (UTC)",
        "state",
        "took",
        "next scheduled (UTC)",
    ):
        table.add_column(column)
    for name, values in rows.items():
        table.add_row(name, *values)
    console.print(table)


def _summary_table(rows: list[Any], title: str) -> Table:
    table = Table(title=title)
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
    ctx: typer.Context,
    hours: Annotated[float, typer.Option(help="Hours of demo trades, ending now")] = 48,
) -> None:
    """Start the local stack, ingest demo trades, run all five timeframes, print a summary."""
    from expectations.project import data_docs_index
    from flows import pipeline, status
    from infra.session import session

    settings = _settings(ctx)
    _start_stack(settings)
    _print_ingest(_ingest_demo(settings, hours, 6, 20, 7))
    tables = pipeline.tables_for(settings)
    with _flow_context(settings):
        prefect_ui = prefect_server.api_url(settings).removesuffix("/api")
        flows = _candle_flows()
        for name in TIMEFRAMES:  # shortest first: each reconciles with the one before
            _print_metrics(flows.FLOWS[name]())
    with session(settings) as spark:
        for tf in TIMEFRAMES.values():
            rows = status.symbol_summary(spark, tables, tf)
            console.print(_summary_table(rows, tables.candles(tf)))
    console.print("\nWhat to look at next:")
    console.print(f"  Prefect UI (the five flow runs, their tasks, logs, artifacts): {prefect_ui}")
    console.print(f"  data docs (every validation): {data_docs_index(settings.gx_root)}")
    console.print("  `ohlcv status`, and `ohlcv stack down` when you are done")


@app.command("docs")
@_friendly_errors
def docs_command(
    ctx: typer.Context,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the site in the default browser")
    ] = False,
) -> None:
    """Build the GX data docs site (suites and validation results) and print its path."""
    from expectations.data_docs import build_data_docs

    settings = _settings(ctx)
    index = build_data_docs(settings.gx_root, settings.web_cache_dir)
    console.print(str(index))
    if open_browser:
        webbrowser.open(index.as_uri())


# reading candles ----------------------------------------------------------------------------


def _output_format(name: str) -> str:
    from read.export import output_format

    return output_format(name)


def _candle_window(
    start: str | None, end: str | None, last: str | None, tf: Timeframe
) -> tuple[datetime | None, datetime | None]:
    """[start, end) from --start/--end, or from --last (whole windows up to now)."""
    from core.ranges import align_down

    if last is None:
        return (parse_instant(start) if start else None, parse_instant(end) if end else None)
    if start is not None or end is not None:
        raise typer.BadParameter("--last and --start/--end exclude each other: give one of them")
    return align_down(datetime.now(UTC) - parse_duration(last), tf), None


def _chosen_format(fmt: str | None, output: Path | None) -> str:
    """The format asked for, else the output file's (.parquet), else CSV."""
    chosen = fmt or ("parquet" if output and output.suffix == ".parquet" else "csv")
    if chosen == "parquet" and output is None:
        raise typer.BadParameter("--format parquet writes a file: add --output FILE")
    if chosen == "table" and output is not None:
        raise typer.BadParameter("--format table prints to the terminal: drop --output")
    return chosen


def _read_candle_table(settings: Settings, query: Any) -> Any:
    """The query's candles as an Arrow table: PyIceberg, or a Spark session for --live."""
    from read.iceberg_reader import read_candles_arrow
    from read.shape import normalized
    from read.spark_reader import candles_frame

    if not query.live:
        from infra.catalog import open_catalog

        return read_candles_arrow(open_catalog(settings), settings.namespace, query)
    from core.tables import Tables
    from infra.session import session

    with session(settings) as spark:
        tables = Tables(settings.catalog_name, settings.namespace)
        return normalized(candles_frame(spark, tables, query).toArrow(), live=True)


def _print_candle_table(rows: Any, title: str) -> None:
    """The columns that fit a terminal (CSV and Parquet have them all)."""
    from read.export import TABLE_COLUMNS, text_rows

    shown = rows.select([c for c in TABLE_COLUMNS if c in rows.column_names])
    out = Table(title=title)
    for column in shown.column_names:
        out.add_column(column, no_wrap=True)
    for row in text_rows(shown):
        out.add_row(*row)
    console.print(out)


@app.command("candles")
@_friendly_errors
def candles_command(
    ctx: typer.Context,
    symbols: Annotated[
        list[str], typer.Argument(help="One or more symbols, e.g. BTC-USD", metavar="SYMBOL")
    ],
    tf: Annotated[
        str, typer.Option("--tf", help="1m, 5m, 30m, 1h or 1d", callback=_usage(timeframe))
    ] = "1m",
    start: Annotated[
        str | None,
        typer.Option(
            help="First window start, ISO-8601 (UTC without offset)", callback=_usage(parse_instant)
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="Windows starting before this, ISO-8601", callback=_usage(parse_instant)),
    ] = None,
    last: Annotated[
        str | None,
        typer.Option(
            help="The windows of the last DURATION, e.g. 2h", callback=_usage(parse_duration)
        ),
    ] = None,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Add the live tail: candles not published yet, computed now from the trades "
            "(column provisional; needs the Spark Connect server)",
        ),
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="The candles as published at this time, ISO-8601",
            callback=_usage(parse_instant),
        ),
    ] = None,
    exchange: Annotated[str | None, typer.Option(help="Only this exchange")] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv (default), table (the main columns, for a terminal) or parquet "
            "(default with --output *.parquet)",
            callback=_usage(_output_format),
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Write to this file instead of standard output", dir_okay=False),
    ] = None,
) -> None:
    """Print or export candles: exact decimals, the candle tables' columns, CSV by default.

    Reads the published candles through PyIceberg (no Spark needed); --live also needs the
    Spark Connect server.
    """
    from read.query import CandleQuery

    settings = _settings(ctx)
    tf_ = timeframe(tf)
    chosen = _chosen_format(fmt, output)
    first, stop = _candle_window(start, end, last, tf_)
    try:
        query = CandleQuery.of(tf_, symbols, first, stop, exchange=exchange, as_of=as_of, live=live)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    rows = _read_candle_table(settings, query)
    if rows.num_rows == 0:
        err.print(f"no {query.describe()}")
    if chosen == "table":
        _print_candle_table(rows, query.describe())
    elif chosen == "parquet":
        from read.export import write_parquet

        assert output is not None  # _chosen_format insists
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


def main() -> None:
    """The `ohlcv` command."""
    import os

    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        # Piped or logged output: wide tables stay whole lines instead of wrapping at 80.
        console.width = 200
    if "serve" not in sys.argv[1:]:
        # Run logs go to the Prefect server, not beside the summaries; read before Prefect's
        # first import (its logging is set up once, then).
        os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(RUN_LOGGING))
    app()
