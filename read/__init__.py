"""The read side: candles for people, notebooks and scripts.

``from read import read_candles`` — published candles as a pandas DataFrame (PyIceberg, no
JVM), as published at a past time (``as_of``), or with the live tail (``live=True`` and a Spark
session). See :mod:`read.api`.
"""

from core.tables import PROVISIONAL
from read.api import read_candle_table, read_candles
from read.as_of import AsOfUnavailable
from read.query import CandleQuery
from read.revisions import read_revisions
from read.spark_reader import candles_frame

__all__ = [
    "PROVISIONAL",
    "AsOfUnavailable",
    "CandleQuery",
    "candles_frame",
    "read_candle_table",
    "read_candles",
    "read_revisions",
]
