"""Text trade ids without a JVM: parsing, keys, re-deliveries, missing ids, the table upgrade.

The expectations are written out by hand from the rules in docs/architecture.md ("Trade
ids"), not computed by the code under test.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.types import LongType, StringType

from core.tables import MAX_TRADE_ID_LENGTH, TRADES, TRADES_REJECTED, ensure_tables
from ingest import SchemaError, TablesOutdated, ingest
from ingest.amounts import not_numbers, parse_amount
from tests.support.environment import sqlite_catalog
from tests.support.oracle import Trade
from tests.support.upgrade import OLD_TRADES_SCHEMA, create_old_trades, old_rows

NOW = datetime(2026, 3, 2, tzinfo=UTC)
UUIDS = [str(uuid.UUID(int=i * 7919 + 13, version=4)) for i in range(3)]


@pytest.fixture(scope="module")
def iceberg(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    return sqlite_catalog(tmp_path_factory.mktemp("trade_ids"))


@pytest.fixture
def namespace(iceberg: Catalog) -> str:
    name = f"ids_{uuid.uuid4().hex[:10]}"
    ensure_tables(iceberg, name)
    return name


def rows(*trades: tuple[Any, ...]) -> pa.Table:
    """(trade_id, price, ts second) per row; the rest fixed."""
    return pa.table(
        {
            "exchange": ["bybit"] * len(trades),
            "symbol": ["BTCUSDT"] * len(trades),
            "trade_id": pa.array([t[0] for t in trades], pa.large_string()),
            "price": [str(t[1]) for t in trades],
            "quantity": ["0.5"] * len(trades),
            "side": ["buy"] * len(trades),
            "ts": [f"2026-03-01T10:00:{t[2]:02d}Z" for t in trades],
        }
    )


def run(catalog: Catalog, namespace: str, table: pa.Table, **kwargs: Any) -> Any:
    result = ingest(catalog, namespace, table, source="test", now=NOW, **kwargs)
    assert result.rows_in == result.accepted + result.duplicates + result.rejected
    return result


def stored(catalog: Catalog, namespace: str) -> list[tuple[Any, Any, Decimal]]:
    table = catalog.load_table((namespace, TRADES)).scan().to_arrow()
    return sorted(
        ((r["trade_id"], r["trade_id_text"], r["price"]) for r in table.to_pylist()),
        key=repr,
    )


def test_text_ids_are_kept_as_given_and_numbers_stay_numbers(
    iceberg: Catalog, namespace: str
) -> None:
    result = run(
        iceberg,
        namespace,
        rows(
            (UUIDS[0], 1, 0),
            ("  ETH-123456\t", 2, 0),  # surrounding whitespace is not part of the id
            ("17", 3, 0),  # a number: trade_id 17, as before text ids
            ("0018", 4, 0),  # a number too (leading zeros), as before
            ("-5", 5, 0),  # a number, but no id: rejected as before
            ("7.5", 6, 0),
            ("X" * (MAX_TRADE_ID_LENGTH + 1), 7, 0),  # too long to be an id
            ("é" * MAX_TRADE_ID_LENGTH, 8, 0),  # at the limit (characters, not bytes)
        ),
    )
    assert (result.accepted, result.rejected_by_reason) == (5, {"invalid_trade_id": 3})
    assert stored(iceberg, namespace) == sorted(
        [
            (None, UUIDS[0], Decimal("1.00000000")),
            (None, "ETH-123456", Decimal("2.00000000")),
            (17, None, Decimal("3.00000000")),
            (18, None, Decimal("4.00000000")),
            (None, "é" * MAX_TRADE_ID_LENGTH, Decimal("8.00000000")),
        ],
        key=repr,
    )
    rejected = iceberg.load_table((namespace, TRADES_REJECTED)).scan().to_arrow()
    assert sorted(rejected["trade_id"].to_pylist()) == ["-5", "7.5", "X" * 129]


def test_a_text_id_never_shares_a_key_with_a_number_and_redelivery_is_a_duplicate(
    iceberg: Catalog, namespace: str
) -> None:
    # Given: a numeric id 1 and text ids that only look alike ("1 " is the number 1)
    first = run(iceberg, namespace, rows(("1", 10, 1), ("ETH-1", 11, 1), ("eth-1", 12, 1)))
    assert first.accepted == 3
    # When: the same trades come again, with one new text id and a changed version of one
    again = run(
        iceberg,
        namespace,
        rows(
            ("ETH-1", 11, 1),
            ("1 ", 10, 1),
            ("eth-1", 12, 1),
            ("ETH-2", 13, 2),
            ("ETH-1", 99, 1),  # same key, other price
        ),
    )
    # Then: the copies are duplicates, the new one is kept, the changed one is a conflict
    assert (again.accepted, again.duplicates) == (1, 3)
    assert again.rejected_by_reason == {"conflicting_duplicate": 1}
    assert [r[:2] for r in stored(iceberg, namespace)] == sorted(
        [(1, None), (None, "ETH-1"), (None, "eth-1"), (None, "ETH-2")], key=repr
    )


def test_many_text_ids_are_recognised_against_stored_ones(iceberg: Catalog, namespace: str) -> None:
    # More distinct ids than the stored-row filter lists one by one (it uses their range)
    ids = [str(uuid.UUID(int=i * 104729 + 1, version=4)) for i in range(450)]
    batch = rows(*((v, 100 + i % 7, i % 60) for i, v in enumerate(ids)))
    assert run(iceberg, namespace, batch.slice(0, 300)).accepted == 300
    result = run(iceberg, namespace, batch)
    assert (result.accepted, result.duplicates) == (150, 300)
    assert run(iceberg, namespace, batch).accepted == 0


def test_a_missing_id_is_rejected_unless_synthetic_ids_are_asked_for(
    iceberg: Catalog, namespace: str
) -> None:
    # Two identical trades without an id (two real trades, not one delivered twice), another
    # one, and a trade with the same content as the first but an id of its own.
    delivery = rows((None, 50, 5), ("", 50, 5), (None, 51, 5), ("ETH-9", 50, 5))
    plain = run(iceberg, namespace, delivery)
    assert (plain.accepted, plain.rejected_by_reason) == (1, {"missing_trade_id": 3})

    synthetic = run(iceberg, namespace, delivery, synthesize_missing_ids=True)
    # Then: all three trades without an id are kept (the one with an id is a duplicate now)
    assert (synthetic.accepted, synthetic.duplicates, synthetic.rejected) == (3, 1, 0)
    texts = sorted(t for _, t, _ in stored(iceberg, namespace) if t != "ETH-9")
    assert [t.startswith("~") for t in texts] == [True] * 3
    same = [t.rsplit(".", 1) for t in texts]
    hashes = {h for h, _ in same}
    assert len(hashes) == 2 and sorted(n for _, n in same) == ["0", "0", "1"]
    # And: the same delivery again is recognised, whatever its row order
    again = run(iceberg, namespace, delivery.take([2, 1, 3, 0]), synthesize_missing_ids=True)
    assert (again.accepted, again.duplicates) == (0, 4)


def test_ensure_tables_upgrades_an_old_trades_table_once(iceberg: Catalog) -> None:
    namespace = f"old_{uuid.uuid4().hex[:10]}"
    # Given: trades as the code before text ids created and wrote it
    old = create_old_trades(iceberg, namespace)
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    old.append(
        old_rows(
            [
                Trade("bybit", "BTCUSDT", 1, Decimal(100), Decimal("0.5"), "buy", at),
                Trade(
                    "bybit", "BTCUSDT", 2, Decimal(101), Decimal("0.5"), "buy", at.replace(second=1)
                ),
            ],
            NOW,
        )
    )
    snapshot = iceberg.load_table((namespace, TRADES)).current_snapshot()
    assert snapshot is not None
    # (an ingest before the upgrade says what to do, and writes nothing)
    with pytest.raises(TablesOutdated, match=rf"{namespace}\.trades predates text trade ids"):
        run(iceberg, namespace, rows((UUIDS[1], 102, 1)))
    # When: this version's ensure_tables runs, twice
    ensure_tables(iceberg, namespace)
    upgraded = iceberg.load_table((namespace, TRADES))
    ensure_tables(iceberg, namespace)
    after = iceberg.load_table((namespace, TRADES))
    # Then: one schema change (trade_id optional, trade_id_text added), no snapshot, no rows
    # lost; the second call changed nothing at all
    fields = {f.name: f for f in upgraded.schema().fields}
    assert not fields["trade_id"].required and fields["trade_id"].field_type == LongType()
    assert fields["trade_id_text"].field_type == StringType()
    assert not fields["trade_id_text"].required
    assert [f.name for f in OLD_TRADES_SCHEMA.fields] == list(fields)[:-1]
    assert after.metadata_location == upgraded.metadata_location
    assert len(upgraded.metadata.schemas) == 2
    assert upgraded.current_snapshot() == snapshot
    stored_rows = upgraded.scan().to_arrow().sort_by("trade_id")
    assert stored_rows["trade_id"].to_pylist() == [1, 2]
    assert stored_rows["trade_id_text"].to_pylist() == [None, None]
    # And: text ids go in, and the old trades delivered again are duplicates
    result = run(iceberg, namespace, rows(("1", 100, 0), ("2", 101, 1), (UUIDS[1], 102, 1)))
    assert (result.accepted, result.duplicates) == (1, 2)


EDGES = [
    "",
    " ",
    "1",
    "1.",
    ".5",
    ".",
    "+",
    "-.",
    "+.e1",
    "1e5",
    "1E-5",
    "1e",
    "e5",
    "nan",
    "-Inf",
    "infinity",
    "ETH-1",
    "1.2.3",
    "0x10",
    " 7 ",
    "--1",
    "1 2",
    "١٢",
    "1e+",
    "00",
]


@pytest.mark.parametrize("value", EDGES)
def test_a_text_id_is_exactly_what_parse_amount_refuses_as_a_number(value: str) -> None:
    text = pa.array([value.strip()], pa.large_string())
    try:
        parse_amount(text, "trade_id", scale=0)
        refused = False
    except SchemaError:
        refused = True
    assert bool(not_numbers(text)[0]) == refused
