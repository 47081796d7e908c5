"""Reading revisions: published candles that a later run changed (late trades)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from core.tables import CANDLE_REVISIONS, REVISIONS_SCHEMA
from core.timeframes import Timeframe, timeframe
from read.filters import Term, iceberg_filter
from read.iceberg_reader import load_table
from read.query import Instant, instant, symbols_of
from read.shape import to_pandas

if TYPE_CHECKING:
    import pandas as pd
    from pyiceberg.catalog import Catalog

    from settings import Settings


def read_revisions(
    tf: str | Timeframe | None = None,
    symbols: str | Sequence[str] | None = None,
    *,
    since: Instant | None = None,
    settings: Settings | None = None,
    catalog: Catalog | None = None,
) -> pd.DataFrame:
    """Published candles that a later run changed (late trades): one row per revised candle.

    Columns: timeframe, exchange, symbol, window_start, ``old_<column>`` and ``new_<column>``
    for every other candle column, revised_at (when the revision was published),
    candle_snapshot_id (the ``main`` snapshot that published it) and trades_snapshot_id.

    Args:
        tf: only this timeframe (default: all).
        symbols: only these symbols (default: all).
        since: only revisions published at or after this time.
    """
    if settings is None:
        from settings import Settings

        settings = Settings()
    if catalog is None:
        from infra.catalog import open_catalog

        catalog = open_catalog(settings)
    terms: list[Term] = []
    if tf is not None:
        terms.append(Term("timeframe", "==", timeframe(tf).name))
    if symbols is not None:
        terms.append(Term("symbol", "in", symbols_of(symbols)))
    since_ = instant(since, "since")
    if since_ is not None:
        terms.append(Term("revised_at", ">=", since_))
    expression = iceberg_filter(terms)
    table = load_table(catalog, settings.namespace, CANDLE_REVISIONS)
    schema = pa.schema([pa.field(f.name, f.type) for f in REVISIONS_SCHEMA.as_arrow()])
    rows = table.scan(row_filter=expression).to_arrow().select(schema.names).cast(schema)
    ordered = rows.sort_by(
        [(c, "ascending") for c in ("revised_at", "timeframe", "exchange", "symbol")]
        + [("window_start", "ascending")]
    )
    return to_pandas(ordered)
