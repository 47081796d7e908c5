"""Parsing of the commands' parameters: a value the library refuses is a usage error (exit
code 2, with the command's usage), like every other wrong argument, not a runtime error."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from core.time import parse_instant
from core.timeframes import TIMEFRAMES, timeframe

if TYPE_CHECKING:
    from core.timeframes import Timeframe

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def usage(parse: Callable[[str], Any]) -> Callable[[str | None], str | None]:
    """A parameter callback: a value ``parse`` refuses is a usage error."""

    def check(value: str | None) -> str | None:
        if value is not None:
            try:
                parse(value)
            except ValueError as e:
                raise typer.BadParameter(str(e)) from None
        return value

    return check


def instant(help: str, *names: str) -> Any:
    """An option holding an ISO-8601 time (UTC when it has no offset)."""
    return typer.Option(*names, help=help, callback=usage(parse_instant))


def duration(help: str) -> Any:
    """An option holding a duration such as 10m or 2h."""
    return typer.Option(help=help, callback=usage(parse_duration))


TIMEFRAME_HELP = "1m, 5m, 30m, 1h or 1d"
BACKFILL_TIMEFRAME_HELP = (
    "1m, 5m, 30m, 1h or 1d; or all (every timeframe in one pass over the trades, the longer "
    "ones rolled up from 1m)"
)


def backfill_timeframes(name: str) -> list[Timeframe]:
    """A timeframe's name, or ``all``: the timeframes a backfill covers."""
    if name == "all":
        return list(TIMEFRAMES.values())
    if name not in TIMEFRAMES:
        raise ValueError(f"unknown timeframe {name!r}: use one of {', '.join(TIMEFRAMES)}, or all")
    return [timeframe(name)]


def parse_duration(text: str) -> timedelta:
    """'90s', '10m', '2h', '2d' -> timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(
            f"duration {text!r} is not understood: use a number and s, m, h or d (e.g. 10m)"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def known_tables(names: list[str] | None) -> list[str] | None:
    """``--table`` of `maintain`: names of the project's tables."""
    from spark_jobs.maintenance import chosen_tables

    try:
        chosen_tables(names)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    return names


def chunk_size(chunk: str | None, chunk_trades: int | None) -> timedelta:
    """`backfill`'s chunk length (default 1d); --chunk and --chunk-trades exclude each other."""
    if chunk is not None and chunk_trades is not None:
        raise typer.BadParameter(
            f"--chunk {chunk} and --chunk-trades {chunk_trades} both size the chunks: give one"
        )
    return parse_duration(chunk or "1d")


def output_format(name: str) -> str:
    from read.export import output_format as known_format

    return known_format(name)


def candle_window(
    start: str | None, end: str | None, last: str | None, tf: Timeframe
) -> tuple[datetime | None, datetime | None]:
    """[start, end) from --start/--end, or from --last (whole windows up to now)."""
    from core.ranges import align_down

    if last is None:
        return (parse_instant(start) if start else None, parse_instant(end) if end else None)
    if start is not None or end is not None:
        raise typer.BadParameter("--last and --start/--end exclude each other: give one of them")
    return align_down(datetime.now(UTC) - parse_duration(last), tf), None


def chosen_format(fmt: str | None, output: Path | None) -> str:
    """The format asked for, else the output file's (.parquet), else CSV."""
    chosen = fmt or ("parquet" if output and output.suffix == ".parquet" else "csv")
    if chosen == "parquet" and output is None:
        raise typer.BadParameter("--format parquet writes a file: add --output FILE")
    if chosen == "table" and output is not None:
        raise typer.BadParameter("--format table prints to the terminal: drop --output")
    return chosen
