"""Ingestion: validate raw trades and append them to Iceberg with PyIceberg (no Spark).

The package owns everything between an input file or table and the ``trades`` /
``trades_rejected`` tables: reading files (:mod:`ingest.reading`), exact parsing of prices,
quantities, ids and timestamps (:mod:`ingest.parsing`, with :mod:`ingest.amounts` and
:mod:`ingest.timestamps`), the row checks and their reason codes (:mod:`ingest.rules`; the
text length limits are the tables', in :mod:`core.tables`), de-duplication of trades and of
rejects against stored rows (:mod:`ingest.dedup`), numeric and text trade ids and synthetic
ids for missing ones (:mod:`ingest.ids`), the ingest itself (:mod:`ingest.run`) and
the demo trade generator (:mod:`ingest.demo`, import it explicitly).
"""

from core.tables import MAX_EXCHANGE_LENGTH, MAX_SYMBOL_LENGTH
from ingest.reading import REQUIRED_COLUMNS, SchemaError, read_trades_file
from ingest.rules import REASONS
from ingest.run import IngestAccountingError, IngestResult, TablesOutdated, ingest, ingest_file

__all__ = [
    "MAX_EXCHANGE_LENGTH",
    "MAX_SYMBOL_LENGTH",
    "REASONS",
    "REQUIRED_COLUMNS",
    "IngestAccountingError",
    "IngestResult",
    "SchemaError",
    "TablesOutdated",
    "ingest",
    "ingest_file",
    "read_trades_file",
]
