"""The example notebook runs top to bottom against the real server, like a user would run it."""

from __future__ import annotations

import os
import random
import shlex
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import nbformat
import pytest
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables
from core.timeframes import TIMEFRAMES
from flows import pipeline
from flows.pipeline import RunRequest
from settings import Settings
from tests.support.environment import export_settings
from tests.support.trades import START, deliver, random_trades

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "explore_candles.ipynb"
README = ROOT / "README.md"


def test_the_example_notebook_runs_and_agrees_with_the_published_table(
    spark: SparkSession,
    catalog: Catalog,
    tables: Tables,
    run_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = START + timedelta(hours=4)
    deliver(catalog, tables, random_trades(random.Random(61), START, now, 800, 1), now=now)
    pipeline.run_pipeline(spark, run_settings, TIMEFRAMES["5m"], RunRequest(now=now))
    export_settings(monkeypatch, run_settings)

    # The README's headless command, run as written (uv installs nbconvert for it alone)
    command = next(line for line in README.read_text().splitlines() if "jupyter nbconvert" in line)
    args = shlex.split(command)
    assert args[0] == "uv"
    uv = os.environ.get("UV") or shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    done = subprocess.run([uv, *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    notebook = nbformat.read(ROOT / ".ohlcv" / "notebooks" / NOTEBOOK.name, as_version=4)
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "only ad hoc: 0; only published: 0" in printed
    images = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert images, "the candlestick chart was not drawn"
