"""The read side: candles for people, notebooks and scripts.

``from read import read_candles`` — published candles as a pandas DataFrame (PyIceberg, no
JVM), as published at a past time (``as_of``), or with the live tail (``live=True`` and a Spark
session). See :mod:`read.api`.
"""

from read.api import (
    PROVISIONAL,
    AsOfUnavailable,
    CandleQuery,
    candles_frame,
    read_candle_table,
    read_candles,
    read_revisions,
)

__all__ = [
    "PROVISIONAL",
    "AsOfUnavailable",
    "CandleQuery",
    "candles_frame",
    "read_candle_table",
    "read_candles",
    "read_revisions",
]
