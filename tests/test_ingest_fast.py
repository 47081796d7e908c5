"""Ingestion's fast paths give exactly what the general paths give (no Spark, no mocks).

Each fast path is checked against the general one on the same input, and each test is made to
fail by a wrong fast path (a stale metadata cache, a shortcut taken where it does not apply).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import update as table_update

from core.tables import TRADES, ensure_tables
from infra.catalog import open_catalog
from ingest import appending
from ingest.appending import CachedTransaction
from settings import CatalogType, Settings


@pytest.fixture(scope="module")
def iceberg(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("ingest-fast"),
        catalog_type=CatalogType.SQLITE,
        catalog_uri=None,
        warehouse=None,
    )
    return open_catalog(settings)


@pytest.fixture
def namespace(iceberg: Catalog) -> str:
    name = f"fast_{uuid.uuid4().hex[:10]}"
    ensure_tables(iceberg, name)
    return name


# --------------------------------------------------------------------------------------------
# The cached transaction metadata


def test_cached_transaction_sees_every_staged_update(iceberg: Catalog, namespace: str) -> None:
    table = iceberg.load_table((namespace, TRADES))
    with CachedTransaction(table) as txn:
        first = txn.table_metadata
        assert txn.table_metadata is first  # computed once per staged state
        txn.set_properties({"ohlcv.test.a": "1"})
        assert txn.table_metadata.properties["ohlcv.test.a"] == "1"  # a stale cache fails here
        txn.set_properties({"ohlcv.test.b": "2"})
        assert txn.table_metadata.properties["ohlcv.test.b"] == "2"
    stored = iceberg.load_table((namespace, TRADES)).properties
    assert (stored["ohlcv.test.a"], stored["ohlcv.test.b"]) == ("1", "2")


def test_append_copies_the_metadata_a_fixed_number_of_times(
    iceberg: Catalog, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a table with some history
    from ingest import ingest
    from tests.test_ingest import NOW, text_row, text_table

    for i in range(5):
        ingest(iceberg, namespace, text_table([text_row(trade_id=str(i))]), source="t", now=NOW)
    calls = 0
    real = appending.update_table_metadata

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    # When one more ingest appends (the catalog's own commit copies are not counted here)
    monkeypatch.setattr(appending, "update_table_metadata", counted)
    monkeypatch.setattr(table_update, "update_table_metadata", counted)
    ingest(iceberg, namespace, text_table([text_row(trade_id="99")]), source="t", now=NOW)
    # Then the transaction worked its metadata out once per staged state, not once per read
    assert 1 <= calls <= 3, calls
