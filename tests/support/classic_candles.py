"""Run the pure candle function on a classic (non-Connect) local Spark session.

Usage: python -m tests.support.classic_candles TRADES.parquet OUT_DIR ID_LOW ID_HIGH
Writes OUT_DIR/<key>/<timeframe> Parquet directories, key "struct" (no trade-id range given)
and "packed" (the range given). Runs in its own process because a
process that has opened a Spark Connect session cannot also start a classic one.
"""

from __future__ import annotations

import sys

from pyspark.sql import SparkSession

from core.timeframes import TIMEFRAMES
from spark_jobs.candles import TradeIdRange, candles


def main(trades_path: str, out_dir: str, ids: TradeIdRange) -> None:
    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    trades = spark.read.parquet(trades_path)
    for tf in TIMEFRAMES.values():
        candles(trades, tf).write.parquet(f"{out_dir}/struct/{tf.name}")
        candles(trades, tf, ids).write.parquet(f"{out_dir}/packed/{tf.name}")
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], TradeIdRange(int(sys.argv[3]), int(sys.argv[4])))
