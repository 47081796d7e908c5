"""Settings of validation (Great Expectations, onepass, the trades sample), a part of
:class:`settings.Settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings


class ValidationSettings(BaseSettings):
    """How candles are checked before they are published (``OHLCV_VALIDATION_*``,
    ``OHLCV_GX_DIR``)."""

    gx_dir: Path | None = Field(
        default=None,
        description="GX project root: validation results and data docs under gx/. Unset: "
        "<data_dir>.",
    )
    validation_engine: Literal["auto", "spark", "pandas", "onepass"] = Field(
        default="auto",
        description="pandas: GX validates the collected rows; spark: GX validates the Spark "
        "DataFrame (Spark jobs per expectation); onepass: each suite is evaluated as Spark "
        "aggregations, all of a run's checks in one query, and stored as its GX result. auto: "
        "pandas up to "
        "OHLCV_VALIDATION_PANDAS_MAX_ROWS rows, onepass above.",
    )
    # Measured side by side (1m suite, load average 11): 500 rows pandas 5.0 s / onepass 3.8 s,
    # 20,000 rows 7.2 s / 3.5 s, 100,000 rows 19.6 s / 5.7 s; 400,000 rows GX's Spark engine
    # 70 s / onepass 13 s. A backfill of all five timeframes in three chunks of ~800 trades
    # (quiet): pandas 6.5 s / onepass 4.1 s of validation per run. So onepass is the default
    # at every size; GX's pandas engine remains a choice (a number of rows here).
    validation_pandas_max_rows: int = Field(
        default=0,
        ge=0,
        description="With OHLCV_VALIDATION_ENGINE=auto: batches up to this many candles are "
        "validated by GX's pandas engine, larger ones by onepass. 0: always onepass.",
    )
    validation_sample_windows: int = Field(
        default=64,
        ge=1,
        description="Rolled-up candles (a backfill of several timeframes) are checked against "
        "candles recomputed from the trades of up to this many random windows of the chunk's "
        "longest timeframe, every window inside them (the test suite checks all).",
    )
    validation_sample_trades: int = Field(
        default=100_000,
        ge=1,
        description="Those windows hold at most this many trades in all (at least one window "
        "is picked): read once per chunk, cached, shared by the chunk's timeframes.",
    )
    validation_results_kept: int = Field(
        default=300,
        ge=1,
        description="Validation results (and their data docs pages) kept per suite, newest "
        "first: every run adds one, and GX rebuilds the data docs index over all of them (the "
        "index lists the newest 100 of all suites).",
    )
