"""The commands that read: `candles` (published candles, as of a time, the live tail) and
`docs` (the GX data docs site)."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import output
from cli.app import app, settings_of
from cli.errors import friendly_errors
from cli.params import (
    TIMEFRAME_HELP,
    candle_window,
    chosen_format,
    duration,
    instant,
    output_format,
    usage,
)
from core.timeframes import timeframe
from settings import Settings


@app.command("docs")
@friendly_errors
def docs_command(
    ctx: typer.Context,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the site in the default browser")
    ] = False,
) -> None:
    """Build the GX data docs site (suites and validation results) and print its path."""
    from expectations.data_docs import build_data_docs

    settings = settings_of(ctx)
    index = build_data_docs(settings.gx_root, settings.web_cache_dir)
    output.console.print(str(index))
    if open_browser:
        webbrowser.open(index.as_uri())


def _read(settings: Settings, query: Any) -> Any:
    """The query's candles as an Arrow table: PyIceberg, or a Spark session for --live."""
    from read import read_candle_table

    if not query.live:
        return read_candle_table(query, settings)
    from infra.session import session

    with session(settings) as spark:
        return read_candle_table(query, settings, spark=spark)


@app.command("candles")
@friendly_errors
def candles_command(
    ctx: typer.Context,
    symbols: Annotated[
        list[str], typer.Argument(help="One or more symbols, e.g. BTC-USD", metavar="SYMBOL")
    ],
    tf: Annotated[str, typer.Option("--tf", help=TIMEFRAME_HELP, callback=usage(timeframe))] = "1m",
    start: Annotated[
        str | None, instant("First window start, ISO-8601 (UTC without offset)")
    ] = None,
    end: Annotated[str | None, instant("Windows starting before this, ISO-8601")] = None,
    last: Annotated[str | None, duration("The windows of the last DURATION, e.g. 2h")] = None,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Add the live tail: candles not published yet, computed now from the trades "
            "(column provisional; needs the Spark Connect server)",
        ),
    ] = False,
    as_of: Annotated[
        str | None, instant("The candles as published at this time, ISO-8601", "--as-of")
    ] = None,
    exchange: Annotated[str | None, typer.Option(help="Only this exchange")] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="csv (default), table (the main columns, for a terminal) or parquet "
            "(default with --output *.parquet)",
            callback=usage(output_format),
        ),
    ] = None,
    output_file: Annotated[
        Path | None,
        typer.Option(
            "--output", help="Write to this file instead of standard output", dir_okay=False
        ),
    ] = None,
) -> None:
    """Print or export candles: exact decimals, the candle tables' columns, CSV by default.

    Reads the published candles through PyIceberg (no Spark needed); --live also needs the
    Spark Connect server.
    """
    from read import CandleQuery

    tf_ = timeframe(tf)
    chosen = chosen_format(fmt, output_file)
    first, stop = candle_window(start, end, last, tf_)
    try:
        query = CandleQuery.of(tf_, symbols, first, stop, exchange=exchange, as_of=as_of, live=live)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    rows = _read(settings_of(ctx), query)
    output.write_candles(rows, chosen, output_file, query.describe())
