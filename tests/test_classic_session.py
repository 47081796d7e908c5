"""The pure candle functions give the same result on a classic session as over Spark Connect."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from core.timeframes import TIMEFRAMES
from infra.artifacts import spark_env
from spark_jobs.candles import candles
from tests.support.oracle import Key, candle_rows, diff, expected_candles
from tests.support.trades import START, random_trades, to_arrow

ROOT = Path(__file__).resolve().parent.parent


def _rows_from_parquet(path: Path) -> dict[Key, dict[str, Any]]:
    table = pq.read_table(path)
    for column in ("window_start", "window_end", "open_ts", "close_ts"):
        # Spark stores UTC instants; as int64 microseconds they compare with the oracle's.
        micros = table[column].cast(pa.timestamp("us")).cast(pa.int64())
        table = table.set_column(table.schema.get_field_index(column), column, micros)
    out = {}
    for row in table.to_pylist():
        out[(row.pop("exchange"), row.pop("symbol"), row.pop("window_start"))] = row
    return out


@pytest.mark.jvm  # a classic Spark session in a JVM of its own, beside the session's server
def test_classic_session_matches_connect_and_oracle(spark: SparkSession, tmp_path: Path) -> None:
    rng = random.Random(29)
    trades = random_trades(rng, START, START + timedelta(hours=3), 700, first_id=5_000)
    source = tmp_path / "trades.parquet"
    pq.write_table(to_arrow(trades), source)
    ids = [t.trade_id for t in trades]

    env = {
        k: v
        for k, v in spark_env().items()
        if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.classic_candles",
            str(source),
            str(tmp_path / "out"),
            str(min(ids)),
            str(max(ids)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    connect_df = spark.createDataFrame(to_arrow(trades).to_pandas())
    for tf in TIMEFRAMES.values():
        over_connect = candle_rows(candles(connect_df, tf))
        assert not diff(expected_candles(trades, tf), over_connect)
        for key in ("struct", "packed"):
            assert _rows_from_parquet(tmp_path / "out" / key / tf.name) == over_connect, (tf, key)
