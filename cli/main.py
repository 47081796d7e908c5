"""The ``ohlcv`` command: the app with every command module registered on it."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from cli import operate, pipeline, read, stack  # noqa: F401  (they register their commands)
from cli.app import app
from cli.output import console

__all__ = ["app", "main"]

RUN_LOGGING = Path(__file__).with_name("run_logging.yml")


def main() -> None:
    """The `ohlcv` command."""
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        # Piped or logged output: wide tables stay whole lines instead of wrapping at 80.
        console.width = 200
    if "serve" not in sys.argv[1:]:
        # Run logs go to the Prefect server, not beside the summaries; read before Prefect's
        # first import (its logging is set up once, then).
        os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(RUN_LOGGING))
        # Nor the Connect client's retries of an unreachable server: a command that gives up
        # ends with one line saying what happened (`ohlcv serve` logs them with its runs).
        retries = logging.getLogger("infra.session")
        retries.addHandler(logging.NullHandler())
        retries.propagate = False
        warnings.filterwarnings("ignore", r"\[RETRIES_EXCEEDED\]", UserWarning, "pyspark")
    app()
