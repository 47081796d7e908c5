"""Ingestion's fast paths give exactly what the general paths give (no Spark, no mocks).

Each fast path is checked against the general one on the same input, and each test is made to
fail by a wrong fast path (a stale metadata cache, a shortcut taken where it does not apply).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import update as table_update

from core.tables import TRADES, TRADES_REJECTED, ensure_tables
from infra.catalog import open_catalog
from ingest import IngestResult, appending, ingest
from ingest import demo as demo_data
from ingest.appending import CachedTransaction
from ingest.dedup import REJECT_IDENTITY, _classify, _read_directly, _Rows
from ingest.parsing import encode_key_text, parse_side
from settings import CatalogType, Settings
from tests.test_ingest import NOW, Row, stored_trades, text_row, text_table


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


# --------------------------------------------------------------------------------------------
# Fast paths of validation and de-duplication: the same tables as the general paths


def _clean_feed() -> pa.Table:
    """Trades every fast path applies to: all valid, ids strictly increasing, exact sides."""
    start = datetime(2024, 5, 1, 23, 0, tzinfo=UTC)  # crosses midnight: two partitions
    table = demo_data.demo_trades(
        start=start,
        end=start + timedelta(hours=2),
        symbols=("BTC-USD", "DOGE-USD", "NEW-USD"),
        trades_per_minute=6,
        late_fraction=0.0,
        duplicate_fraction=0.0,
        bad_rows=0,
    )
    table = table.sort_by("trade_id")  # the demo feed delivers small runs out of order
    ids = table["trade_id"].to_numpy()
    assert bool(np.all(ids[1:] > ids[:-1])), "the fixture must take the fast paths"
    return table


def _oracle_rows(rows: list[Row]) -> set[tuple[Any, ...]]:
    """What each input row reads back as from ``trades`` (demo rows are typed already)."""
    return {
        (r["exchange"], r["symbol"], r["trade_id"], r["price"], r["quantity"], r["side"], r["ts"])
        for r in rows
    }


def test_fast_and_general_paths_store_the_same_trades(iceberg: Catalog) -> None:
    clean = _clean_feed()
    n = clean.num_rows
    rows = clean.to_pylist()
    now = datetime(2024, 5, 2, 1, 0, tzinfo=UTC)

    def ingested(raw: pa.Table) -> tuple[IngestResult, set[tuple[Any, ...]]]:
        name = f"fast_{uuid.uuid4().hex[:10]}"
        ensure_tables(iceberg, name)
        result = ingest(iceberg, name, raw, source="t", now=now)
        return result, stored_trades(iceberg, name)

    fast, fast_rows = ingested(clean)
    assert (fast.accepted, fast.duplicates, fast.rejected) == (n, 0, 0)
    assert fast_rows == _oracle_rows(rows)

    # Shuffled: ids no longer increasing, so they are sorted to be found distinct.
    order = np.random.default_rng(3).permutation(n)
    shuffled, shuffled_rows = ingested(clean.take(pa.array(order)))
    assert (shuffled.accepted, shuffled_rows) == (n, fast_rows)

    # One side in another spelling: the general side parsing (strip, lower case) runs.
    sides = clean["side"].to_pylist()
    sides[7] = f"  {sides[7].upper()} "
    respelled = clean.set_column(5, "side", pa.array(sides, pa.string()))
    respelled_result, respelled_rows = ingested(respelled)
    assert (respelled_result.accepted, respelled_rows) == (n, fast_rows)

    # One bad row: not every row is valid, so the valid rows are picked out.
    bad = pa.Table.from_pylist([{**rows[3], "trade_id": None}], schema=clean.schema)
    with_bad, with_bad_rows = ingested(pa.concat_tables([clean, bad]))
    assert (with_bad.accepted, with_bad.rejected_by_reason) == (n, {"missing_trade_id": 1})
    assert with_bad_rows == fast_rows


def test_the_fast_paths_are_not_taken_where_they_do_not_apply(iceberg: Catalog) -> None:
    # Each input is one step away from a fast path's condition; a fast path taken anyway
    # would keep a duplicate, keep a conflicting version, or accept a side it must reject.
    clean = _clean_feed()
    n = clean.num_rows
    rows = clean.to_pylist()
    now = datetime(2024, 5, 2, 1, 0, tzinfo=UTC)

    def ingested(extra: list[Row]) -> IngestResult:
        name = f"fast_{uuid.uuid4().hex[:10]}"
        ensure_tables(iceberg, name)
        raw = pa.concat_tables([clean, pa.Table.from_pylist(extra, schema=clean.schema)])
        return ingest(iceberg, name, raw, source="t", now=now)

    # The last row repeated: ids non-decreasing, not strictly increasing.
    repeated = ingested([rows[-1]])
    assert (repeated.accepted, repeated.duplicates, repeated.rejected) == (n, 1, 0)
    # The last id again with another price: both versions are rejected.
    other_price = {**rows[-1], "price": rows[-1]["price"] + 1}
    conflict = ingested([other_price])
    assert (conflict.accepted, conflict.rejected_by_reason) == (
        n - 1,
        {"conflicting_duplicate": 2},
    )
    # A side that is neither buy nor sell; a missing one (each in an input of its own).
    hold = {**rows[-1], "trade_id": rows[-1]["trade_id"] + 1, "side": "hold"}
    missing = {**rows[-1], "trade_id": rows[-1]["trade_id"] + 1, "side": None}
    for extra in (hold, missing):
        sides = ingested([extra])
        assert (sides.accepted, sides.rejected_by_reason) == (n, {"invalid_side": 1})


def test_classify_fast_path_equals_the_general_one() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        # Strictly increasing ids or not, with and without repeats of (id, pair, payload).
        trade_id = np.cumsum(rng.integers(0 if rng.random() < 0.5 else 1, 3, n)).astype(np.int64)
        batch = _Rows(
            pair=rng.integers(0, 2, n).astype(np.int64),
            trade_id=trade_id,
            price=rng.integers(1, 3, n).astype(np.int64),
            quantity=np.ones(n, np.int64),
            is_buy=np.ones(n, bool),
            ts=np.zeros(n, np.int64),
        )
        fast = _classify(batch, _Rows.empty())
        # A stored row under a key no batch row has changes nothing, but takes the general path.
        unrelated = _Rows(
            pair=np.array([99]),
            trade_id=np.array([0]),
            price=np.array([1]),
            quantity=np.array([1]),
            is_buy=np.array([True]),
            ts=np.array([0]),
        )
        general = _classify(batch, unrelated)
        for got, expected in zip(fast, general, strict=True):
            assert got.tolist() == expected.tolist()


def test_side_fast_path_equals_the_general_one() -> None:
    values = pa.chunked_array([["buy", "sell", "sell"], ["buy"]], pa.large_string())
    fast = parse_side(values)
    # A trailing null takes the general path; the other rows must come out the same.
    general = parse_side(pa.chunked_array([*values.chunks, pa.array([None], pa.large_string())]))
    assert fast[0].tolist() == general[0][:-1].tolist() == [True, False, False, True]
    assert fast[1].tolist() == general[1][:-1].tolist() == [True] * 4
    assert general[1][-1].item() is False


def _dictionary_chunks(values: list[str | None], cut: int) -> pa.ChunkedArray:
    """``values`` dictionary-encoded in two chunks, each with a dictionary of its own that
    repeats a value, holds a null and a value no row uses (what no hashing would give)."""
    chunks: list[pa.Array] = []
    for part in (values[:cut], values[cut:]):
        words = sorted({v for v in part if v is not None}, reverse=bool(chunks))
        dictionary = [None, "unused", *words, *words[:1]]
        codes = [None if v is None else 2 + words.index(v) for v in part]
        chunks.append(pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), dictionary))
    return pa.chunked_array(chunks)


def test_dictionary_encoded_text_gives_what_plain_text_gives(iceberg: Catalog) -> None:
    clean = _clean_feed()
    n = clean.num_rows
    rows = clean.to_pylist()
    last = rows[-1]
    odd = [  # spellings that normalise to kept values, blanks, nulls and invalid sides
        {**last, "trade_id": last["trade_id"] + 1, "exchange": " demo ", "side": " BUY"},
        {**last, "trade_id": last["trade_id"] + 2, "symbol": "  "},
        {**last, "trade_id": last["trade_id"] + 3, "exchange": None},
        {**last, "trade_id": last["trade_id"] + 4, "side": "hold"},
        {**last, "trade_id": last["trade_id"] + 5, "side": None},
        {**last, "trade_id": last["trade_id"] + 6, "symbol": "x" * 65},
    ]
    plain = pa.concat_tables([clean, pa.Table.from_pylist(odd, schema=clean.schema)])
    encoded = plain
    for name in ("exchange", "symbol", "side"):
        column = _dictionary_chunks(plain[name].to_pylist(), cut=n // 3)
        encoded = encoded.set_column(encoded.schema.get_field_index(name), name, column)
    now = datetime(2024, 5, 2, 1, 0, tzinfo=UTC)

    def ingested(raw: pa.Table) -> tuple[tuple[int, ...], dict[str, int], Any, Any]:
        name = f"fast_{uuid.uuid4().hex[:10]}"
        ensure_tables(iceberg, name)
        r = ingest(iceberg, name, raw, source="t", now=now)
        rejected = iceberg.load_table((name, TRADES_REJECTED)).scan().to_arrow()
        rejects = sorted(tuple(map(str, row.values())) for row in rejected.to_pylist())
        counts = (r.rows_in, r.accepted, r.duplicates, r.rejected, r.rejects_already_recorded)
        return counts, r.rejected_by_reason, stored_trades(iceberg, name), rejects

    expected = ingested(plain)
    assert expected[0][:2] == (n + 6, n + 1)  # the respelled row is kept
    assert expected[1] == {
        "missing_exchange": 1,
        "missing_symbol": 1,
        "symbol_too_long": 1,
        "invalid_side": 2,
    }
    assert ingested(encoded) == expected


def test_dictionary_codes_of_any_integer_index_type() -> None:
    # Arrow allows unsigned index types, which cannot hold the -1 a null row's code becomes.
    for index_type in (pa.int8(), pa.uint8(), pa.int64(), pa.uint32()):
        indices = pa.array([1, None, 0, 2], index_type)
        column = pa.DictionaryArray.from_arrays(indices, pa.array([" b", "a", ""]))
        codes, values = encode_key_text(pa.chunked_array([column]))
        assert [values[c].as_py() if c >= 0 else None for c in codes] == ["a", None, "b", None]


def test_decimal_fast_paths_give_what_the_general_path_gives(iceberg: Catalog) -> None:
    # DECIMAL(18, 8) is read through a checked cast of its words, DECIMAL(38, 8) word by word,
    # text through Arrow's decimal parser: all three must store and reject the same rows.
    clean = _clean_feed().slice(0, 50)
    prices = clean["price"].to_pylist()
    prices[7] = Decimal("-1")  # non_positive_price
    prices[9] = Decimal("9999999999.99999999")  # the largest DECIMAL(18, 8)
    now = datetime(2024, 5, 2, 1, 0, tzinfo=UTC)

    def ingested(price: pa.Array) -> tuple[Any, ...]:
        name = f"fast_{uuid.uuid4().hex[:10]}"
        ensure_tables(iceberg, name)
        r = ingest(iceberg, name, clean.set_column(3, "price", price), source="t", now=now)
        return r.accepted, r.rejected_by_reason, stored_trades(iceberg, name)

    narrow = ingested(pa.array(prices, pa.decimal128(18, 8)))
    assert narrow[:2] == (49, {"non_positive_price": 1})
    assert ingested(pa.array(prices, pa.decimal128(38, 8))) == narrow
    assert ingested(pa.array([str(p) for p in prices], pa.string())) == narrow

    # A word beyond 64 bits, which DECIMAL(18, 2) cannot hold: refused by the checked cast,
    # found by the word path and rejected, never wrapped into a small number.
    words = np.zeros((len(prices), 2), np.int64)
    words[:, 0] = [int(p * 100) for p in prices]
    words[:, 1] = words[:, 0] >> 63
    words[3] = (0, 1)  # 2**64 hundredths
    huge = pa.Array.from_buffers(pa.decimal128(18, 2), len(prices), [None, pa.py_buffer(words)])
    accepted, reasons, _ = ingested(huge)
    assert (accepted, reasons) == (48, {"non_positive_price": 1, "price_precision": 1})


# --------------------------------------------------------------------------------------------
# Stored rejects read in one Arrow read


def test_direct_read_of_rejects_equals_pyiceberg_read(iceberg: Catalog, namespace: str) -> None:
    # Given rejects from three inputs (three data files), nulls and odd text among them
    for day in (1, 2, 3):
        rows = [
            text_row(trade_id=str(day * 100 + i), price="0", ts=f"2024-05-0{day}T10:00:00Z")
            for i in range(5)
        ]
        rows += [text_row(trade_id=None, symbol=f" s{day} "), text_row(side="hold", exchange="")]
        ingest(iceberg, namespace, text_table(rows), source=f"d{day}", now=NOW)
    table = iceberg.load_table((namespace, TRADES_REJECTED))
    scan = table.scan(selected_fields=REJECT_IDENTITY)
    tasks = list(scan.plan_files())
    assert len(tasks) == 3
    # When the files are read directly
    direct = _read_directly(table, tasks)
    # Then every row and value is what PyIceberg reads, in the same types
    assert direct is not None
    expected = scan.to_arrow()
    expected = pa.table({c: expected[c].cast(pa.large_string()) for c in REJECT_IDENTITY})
    key = [(c, "ascending") for c in REJECT_IDENTITY]
    assert direct.num_rows == expected.num_rows == 7 + 6 + 6  # the blank-exchange row once
    assert direct.sort_by(key).equals(expected.sort_by(key))
    per_file = [_read_directly(table, [task]) for task in tasks]
    assert sorted(t.num_rows for t in per_file if t is not None) == [6, 6, 7]
    nothing = _read_directly(table, [])
    assert nothing is not None and nothing.num_rows == 0


def test_direct_read_of_rejects_is_refused_after_a_rename(iceberg: Catalog, namespace: str) -> None:
    # A column renamed away and another one given its name: reading by name would be wrong.
    ingest(iceberg, namespace, text_table([text_row(price="0")]), source="t", now=NOW)
    table = iceberg.load_table((namespace, TRADES_REJECTED))
    with table.update_schema() as update:
        update.rename_column("side", "side_before")
        update.rename_column("source", "side")
    table = iceberg.load_table((namespace, TRADES_REJECTED))
    tasks = list(table.scan().plan_files())
    assert _read_directly(table, tasks) is None
