"""The ``ohlcv`` Typer apps the command modules register on, and the settings of a call.

Settings are built once per invocation (the callback) and handed to every command.
"""

from __future__ import annotations

import typer

from settings import Settings

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


@app.callback()
def _main(ctx: typer.Context) -> None:
    """Exact OHLCV candles from Iceberg trades over Spark Connect."""
    ctx.obj = Settings()


def settings_of(ctx: typer.Context) -> Settings:
    """The invocation's settings (built once by the callback)."""
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings), "the app callback builds the settings"
    return settings
