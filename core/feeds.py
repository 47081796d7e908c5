"""The names of the trade file formats ingestion reads (light: the CLI's help lists them)."""

OWN_FORMAT = "own"
"""The project's own columns, as Parquet or CSV with a header."""

FORMATS = (
    OWN_FORMAT,
    "binance-trades",
    "binance-aggtrades",
    "binance-futures-trades",
    "tardis-trades",
)
"""Every format ``ohlcv ingest --format`` accepts; :mod:`ingest.formats` reads each."""
