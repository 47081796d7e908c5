"""Ingestion through PyIceberg against a real SQLite-backed catalog (no Spark, no mocks).

Expectations come from hand-written cases and from ``_Oracle``, a plain-Python re-statement of
the rules (scalar ``Decimal`` and ``datetime`` code, nothing shared with the vectorized
implementation).
"""

from __future__ import annotations

import csv
import itertools
import random
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation

from core.tables import TRADES, TRADES_REJECTED, ensure_tables
from infra.catalog import open_catalog
from ingest import (
    MAX_EXCHANGE_LENGTH,
    MAX_SYMBOL_LENGTH,
    REASONS,
    REQUIRED_COLUMNS,
    IngestResult,
    SchemaError,
    ingest,
    ingest_file,
    read_trades_file,
)
from ingest import demo as demo_data
from ingest.dedup import REJECT_IDENTITY, new_rejects, reject_filter
from settings import CatalogType, Settings
from tests.support.stacks import LocalStack, on_shapes

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
MIN_TS = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(minutes=5)
EIGHT_PLACES = Decimal("0.00000001")
# The documented limits (README), restated: characters after stripping surrounding whitespace.
EXCHANGE_LIMIT = 64
SYMBOL_LIMIT = 64

Row = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def iceberg(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("ingest"),
        catalog_type=CatalogType.SQLITE,
        catalog_uri=None,
        warehouse=None,
    )
    return open_catalog(settings)


@pytest.fixture
def namespace(iceberg: Catalog) -> str:
    """Fresh, empty tables for each test."""
    name = f"ingest_{uuid.uuid4().hex[:10]}"
    ensure_tables(iceberg, name)
    return name


def text_row(**overrides: str | None) -> Row:
    """A valid trade as CSV-like text; override any column."""
    row: Row = {
        "exchange": "demo",
        "symbol": "BTC-USD",
        "trade_id": "1",
        "price": "65000.5",
        "quantity": "0.25",
        "side": "buy",
        "ts": "2024-05-01T10:00:00Z",
    }
    row.update(overrides)
    return row


def text_table(rows: Iterable[Row]) -> pa.Table:
    rows = list(rows)
    return pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in REQUIRED_COLUMNS})


def run(catalog: Catalog, namespace: str, raw: pa.Table, **kwargs: Any) -> IngestResult:
    kwargs.setdefault("now", NOW)
    result = ingest(catalog, namespace, raw, source=kwargs.pop("source", "test"), **kwargs)
    # The invariant, checked independently of the implementation's own assertion.
    assert result.rows_in == raw.num_rows
    assert result.rows_in == result.accepted + result.duplicates + result.rejected
    assert sum(result.rejected_by_reason.values()) == result.rejected
    assert 0 <= result.rejects_already_recorded <= result.rejected
    return result


def read(catalog: Catalog, namespace: str, table: str) -> list[Row]:
    return catalog.load_table((namespace, table)).scan().to_arrow().to_pylist()


def snapshot_ids(catalog: Catalog, namespace: str) -> tuple[int | None, int | None]:
    ids = []
    for name in (TRADES, TRADES_REJECTED):
        snapshot = catalog.load_table((namespace, name)).current_snapshot()
        ids.append(None if snapshot is None else snapshot.snapshot_id)
    return ids[0], ids[1]


def stored_row(trade_id: int) -> tuple[Any, ...]:
    """How ``text_row(trade_id=...)`` reads back from ``trades`` (without ingested_at)."""
    ts = datetime(2024, 5, 1, 10, tzinfo=UTC)
    return ("demo", "BTC-USD", trade_id, Decimal("65000.5"), Decimal("0.25"), "buy", ts)


def stored_trades(catalog: Catalog, namespace: str) -> set[tuple[Any, ...]]:
    return {
        (r["exchange"], r["symbol"], r["trade_id"], r["price"], r["quantity"], r["side"], r["ts"])
        for r in read(catalog, namespace, TRADES)
    }


RejectKey = tuple[Any, ...]
"""A reject's identity: its raw values (in REQUIRED_COLUMNS order) and its reason."""


def stored_rejects(catalog: Catalog, namespace: str) -> Counter[RejectKey]:
    """How often each reject identity is in ``trades_rejected``."""
    return Counter(
        (*(r[c] for c in REQUIRED_COLUMNS), r["reason"])
        for r in read(catalog, namespace, TRADES_REJECTED)
    )


# --------------------------------------------------------------------------------------------
# The oracle: the rules, one row at a time, in plain Python


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _number(value: Any) -> Decimal | None:
    """The exact value of a typed or text number; None when missing."""
    if value is None or isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))  # repr is Python's shortest round-trip text
    text = str(value).strip()
    return Decimal(text) if text else None


def _ts(value: Any) -> tuple[datetime, bool] | None:
    """(instant truncated to microseconds, whether a sub-microsecond part was dropped)."""
    if isinstance(value, datetime):
        return _utc(value), False
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    match = re.fullmatch(r"(.*?[0-9]{2}:[0-9]{2}(?::[0-9]{2})?)(?:\.([0-9]+))?(.*)", text)
    assert match, text
    head, frac, zone = match.group(1), match.group(2) or "", match.group(3).strip()
    parsed = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}{zone}")
    return _utc(parsed), bool(frac[6:].strip("0"))


def _is_blank(value: Any) -> bool:
    return value is None or not str(value).strip()


def _fits(value: Decimal) -> bool:
    return abs(value) < 10**10 and value.quantize(EIGHT_PLACES) == value


def first_reason(row: Row, now: datetime = NOW) -> str | None:
    """The documented rule order, evaluated on one row."""
    if _is_blank(row["exchange"]):
        return "missing_exchange"
    if len(str(row["exchange"]).strip()) > EXCHANGE_LIMIT:
        return "exchange_too_long"
    if _is_blank(row["symbol"]):
        return "missing_symbol"
    if len(str(row["symbol"]).strip()) > SYMBOL_LIMIT:
        return "symbol_too_long"
    trade_id = _number(row["trade_id"])
    if trade_id is None:
        return "missing_trade_id"
    if (
        not trade_id.is_finite()
        or trade_id < 0
        or trade_id != trade_id.to_integral_value()
        or trade_id >= 2**63
    ):
        return "invalid_trade_id"
    price, quantity, ts = _number(row["price"]), _number(row["quantity"]), _ts(row["ts"])
    if price is None:
        return "missing_price"
    if quantity is None:
        return "missing_quantity"
    if ts is None:
        return "missing_ts"
    for name, value in (("price", price), ("quantity", quantity)):
        if not value.is_finite():
            return f"non_finite_{name}"
    for name, value in (("price", price), ("quantity", quantity)):
        if value <= 0:
            return f"non_positive_{name}"
    for name, value in (("price", price), ("quantity", quantity)):
        if not _fits(value):
            return f"{name}_precision"
    if str(row["side"] or "").strip().lower() not in ("buy", "sell"):
        return "invalid_side"
    if ts[0] > now + MAX_FUTURE:
        return "ts_in_future"
    if ts[0] < MIN_TS:
        return "ts_too_old"
    if ts[1]:
        return "ts_precision"
    return None


def key_of(row: Row) -> tuple[str, str, int]:
    trade_id = _number(row["trade_id"])
    assert trade_id is not None
    return str(row["exchange"]).strip(), str(row["symbol"]).strip(), int(trade_id)


def payload_of(row: Row) -> tuple[Any, ...]:
    ts = _ts(row["ts"])
    assert ts is not None
    return _number(row["price"]), _number(row["quantity"]), str(row["side"]).strip().lower(), ts[0]


@dataclass
class _Expected:
    """The oracle's verdict on one ingest."""

    accepted: list[Row]
    duplicates: int
    reasons: list[str]
    """The reason of each rejected row, in input order."""
    appended_rejects: list[RejectKey]
    """The rejects to append: each identity not recorded before, once, in input order."""

    @property
    def already_recorded(self) -> int:
        return len(self.reasons) - len(self.appended_rejects)


@dataclass
class _Oracle:
    """Expected outcome of a sequence of ingests into one namespace.

    Raw values must be text or None (as in ``text_table``), or typed values whose text is as
    unique as they are, so that equal raw values here mean equal text in ``trades_rejected``.
    """

    stored: dict[tuple[str, str, int], tuple[Any, ...]] = field(default_factory=dict)
    recorded: set[RejectKey] = field(default_factory=set)

    def ingest(self, rows: list[Row], now: datetime = NOW) -> _Expected:
        reasons = [first_reason(row, now) for row in rows]
        by_key: dict[tuple[str, str, int], list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            if reasons[i] is None:
                by_key[key_of(row)].append(i)
        accepted, duplicates = [], 0
        for key, members in by_key.items():
            payloads = {payload_of(rows[i]) for i in members}
            if key in self.stored:
                for i in members:
                    if payload_of(rows[i]) == self.stored[key]:
                        duplicates += 1
                    else:
                        reasons[i] = "conflicting_duplicate"
            elif len(payloads) > 1:
                for i in members:
                    reasons[i] = "conflicting_duplicate"
            else:
                accepted.append(rows[members[0]])
                duplicates += len(members) - 1
                self.stored[key] = payload_of(rows[members[0]])
        appended = []
        for row, reason in zip(rows, reasons, strict=True):
            if reason is None:
                continue
            identity = (*(row[c] for c in REQUIRED_COLUMNS), reason)
            if identity not in self.recorded:
                self.recorded.add(identity)
                appended.append(identity)
        return _Expected(accepted, duplicates, [r for r in reasons if r is not None], appended)


# --------------------------------------------------------------------------------------------
# Reason codes, one crafted row each

REASON_CASES: list[tuple[str, Row]] = [
    ("missing_exchange", text_row(exchange="   ")),
    ("missing_exchange", text_row(exchange=None)),
    ("exchange_too_long", text_row(exchange="E" * (EXCHANGE_LIMIT + 1))),
    ("exchange_too_long", text_row(exchange=" " + "é" * (EXCHANGE_LIMIT + 1) + " ")),
    ("missing_symbol", text_row(symbol="")),
    ("missing_symbol", text_row(symbol=None)),
    ("symbol_too_long", text_row(symbol="S" * (SYMBOL_LIMIT + 1))),
    ("symbol_too_long", text_row(symbol="S" * 10_000)),
    ("missing_trade_id", text_row(trade_id="")),
    ("invalid_trade_id", text_row(trade_id="-5")),
    ("invalid_trade_id", text_row(trade_id="7.5")),
    ("invalid_trade_id", text_row(trade_id="9223372036854775808")),
    ("missing_price", text_row(price=" ")),
    ("missing_quantity", text_row(quantity=None)),
    ("missing_ts", text_row(ts="")),
    ("non_finite_price", text_row(price="NaN")),
    ("non_finite_price", text_row(price="-inf")),
    ("non_finite_quantity", text_row(quantity="Infinity")),
    ("non_positive_price", text_row(price="0")),
    ("non_positive_price", text_row(price="-12.5")),
    ("non_positive_quantity", text_row(quantity="-0.00000000")),
    ("price_precision", text_row(price="1.000000001")),
    ("price_precision", text_row(price="10000000000")),
    ("price_precision", text_row(price="1e-9")),
    ("quantity_precision", text_row(quantity="0.123456789")),
    ("invalid_side", text_row(side="hold")),
    ("invalid_side", text_row(side="")),
    ("ts_in_future", text_row(ts="2024-06-01T12:05:00.000001Z")),
    ("ts_too_old", text_row(ts="1999-12-31T23:59:59.999999Z")),
    ("ts_precision", text_row(ts="2024-05-01T10:00:00.0000001Z")),
]


def test_reason_cases_cover_every_code() -> None:
    covered = {reason for reason, _ in REASON_CASES} | {"conflicting_duplicate"}
    assert covered == set(REASONS)


@pytest.mark.parametrize(
    ("reason", "bad"), REASON_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(REASON_CASES)]
)
def test_each_reason_code_is_recorded_with_raw_values(
    iceberg: Catalog, namespace: str, reason: str, bad: Row
) -> None:
    # Given a good trade and a crafted bad one (distinct trade ids)
    good = text_row(trade_id="1")
    bad = {**bad, "trade_id": bad["trade_id"] if bad["trade_id"] != "1" else "2"}
    # When they are ingested
    result = run(iceberg, namespace, text_table([good, bad]), source="crafted.csv")
    # Then the good one is stored and the bad one rejected with its raw text and the reason
    assert (result.accepted, result.duplicates, result.rejected) == (1, 0, 1)
    assert result.rejected_by_reason == {reason: 1}
    assert first_reason(bad) == reason  # the oracle agrees with the hand-written case
    assert [r["trade_id"] for r in read(iceberg, namespace, TRADES)] == [1]
    (rejected,) = read(iceberg, namespace, TRADES_REJECTED)
    assert rejected == {**bad, "reason": reason, "source": "crafted.csv", "rejected_at": NOW}


def test_boundary_values_are_accepted(iceberg: Catalog, namespace: str) -> None:
    rows = [
        text_row(trade_id="1", ts="2024-06-01T12:05:00Z"),  # exactly now + max_future
        text_row(trade_id="2", ts="2000-01-01T00:00:00Z"),  # exactly min_ts
        text_row(trade_id="3", price="9999999999.99999999", quantity="0.00000001"),
        text_row(trade_id="4", price="1.1000000000000", quantity="2E-8"),  # zeros, exponent
        text_row(trade_id="9223372036854775807"),  # largest int64
        text_row(trade_id="5", ts="2024-05-01T10:00:00.123456000Z"),  # zeros past microseconds
    ]
    result = run(iceberg, namespace, text_table(rows))
    assert (result.accepted, result.rejected) == (6, 0)
    by_id = {r["trade_id"]: r for r in read(iceberg, namespace, TRADES)}
    assert by_id[3]["price"] == Decimal("9999999999.99999999")
    assert by_id[3]["quantity"] == Decimal("0.00000001")
    assert by_id[4]["price"] == Decimal("1.1") and by_id[4]["quantity"] == Decimal("2E-8")
    assert by_id[5]["ts"] == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert 9223372036854775807 in by_id


def test_first_applicable_reason_wins(iceberg: Catalog, namespace: str) -> None:
    rows = [
        text_row(trade_id="1", symbol="", price="-1", side="hold"),  # missing_symbol first
        text_row(trade_id="2", price="-inf"),  # non_finite before non_positive
        text_row(trade_id="3", price="-0.000000001"),  # non_positive before precision
        text_row(trade_id="4", quantity="0", price="1.123456789"),  # non_positive_quantity
        text_row(trade_id="5", side="x", ts="2099-01-01T00:00:00Z"),  # invalid_side first
        text_row(trade_id="-1", price=""),  # invalid_trade_id before missing_price
        text_row(trade_id="6", exchange="E" * 65, symbol=""),  # too long before missing_symbol
        text_row(trade_id="7", symbol="S" * 65, price="-1"),  # symbol_too_long first
        text_row(trade_id="8", exchange=" ", symbol="S" * 65),  # missing before too long
        text_row(trade_id="", symbol="S" * 65),  # symbol_too_long before missing_trade_id
    ]
    run(iceberg, namespace, text_table(rows))
    got = {r["trade_id"]: r["reason"] for r in read(iceberg, namespace, TRADES_REJECTED)}
    assert got == {
        "1": "missing_symbol",
        "2": "non_finite_price",
        "3": "non_positive_price",
        "4": "non_positive_quantity",
        "5": "invalid_side",
        "-1": "invalid_trade_id",
        "6": "exchange_too_long",
        "7": "symbol_too_long",
        "8": "missing_exchange",
        "": "symbol_too_long",
    }


# --------------------------------------------------------------------------------------------
# Duplicates and conflicts


def test_exact_duplicates_in_one_file_keep_one(iceberg: Catalog, namespace: str) -> None:
    # Equal after normalisation: whitespace around names, side case, trailing zeros, zones.
    rows = [
        text_row(trade_id="7"),
        text_row(trade_id="7", symbol=" BTC-USD ", side=" BUY", price="65000.50000"),
        text_row(trade_id="7", ts="2024-05-01T12:00:00+02:00"),
        text_row(trade_id="8"),
    ]
    result = run(iceberg, namespace, text_table(rows))
    assert (result.accepted, result.duplicates, result.rejected) == (2, 2, 0)
    assert stored_trades(iceberg, namespace) == {stored_row(7), stored_row(8)}


def test_exact_duplicates_of_stored_rows_are_dropped(iceberg: Catalog, namespace: str) -> None:
    first = [text_row(trade_id=str(i)) for i in range(1, 6)]
    first_result = run(iceberg, namespace, text_table(first))
    assert first_result.accepted == 5 and first_result.trades_snapshot_id is not None
    before = stored_trades(iceberg, namespace)

    again = run(iceberg, namespace, text_table(first))
    assert (again.accepted, again.duplicates, again.rejected) == (0, 5, 0)
    assert again.trades_snapshot_id is None  # nothing appended
    assert snapshot_ids(iceberg, namespace)[0] == first_result.trades_snapshot_id

    mixed = run(iceberg, namespace, text_table([*first[:2], text_row(trade_id="6")]))
    assert (mixed.accepted, mixed.duplicates, mixed.rejected) == (1, 2, 0)
    assert stored_trades(iceberg, namespace) - before == {stored_row(6)}
    assert len(read(iceberg, namespace, TRADES)) == 6


def test_conflicting_versions_in_one_file_are_all_rejected(
    iceberg: Catalog, namespace: str
) -> None:
    rows = [
        text_row(trade_id="9", price="100"),
        text_row(trade_id="9", price="100"),  # an exact copy of a conflicting version
        text_row(trade_id="9", price="101"),
        text_row(trade_id="10", side="sell"),
        text_row(trade_id="10", side="buy"),
        text_row(trade_id="9", symbol="ETH-USD"),  # another key: unaffected
    ]
    result = run(iceberg, namespace, text_table(rows))
    assert (result.accepted, result.duplicates, result.rejected) == (1, 0, 5)
    assert result.rejected_by_reason == {"conflicting_duplicate": 5}
    assert result.rejects_already_recorded == 1  # the exact copy is recorded once
    assert [(r["symbol"], r["trade_id"]) for r in read(iceberg, namespace, TRADES)] == [
        ("ETH-USD", 9)
    ]
    rejected = read(iceberg, namespace, TRADES_REJECTED)
    assert Counter((r["trade_id"], r["price"], r["side"]) for r in rejected) == Counter(
        {("9", "100", "buy"): 1, ("9", "101", "buy"): 1, ("10", "65000.5", "sell"): 1,
         ("10", "65000.5", "buy"): 1}
    )  # fmt: skip


def test_versions_conflicting_with_a_stored_row_are_rejected(
    iceberg: Catalog, namespace: str
) -> None:
    stored = text_row(trade_id="11", price="50")
    run(iceberg, namespace, text_table([stored]))
    before = stored_trades(iceberg, namespace)
    rows = [
        text_row(trade_id="11", price="50.000"),  # same as stored: a duplicate
        text_row(trade_id="11", price="51"),  # conflicts with the stored row
        text_row(trade_id="11", price="50", ts="2024-05-01T10:00:01Z"),  # conflicting ts
        text_row(trade_id="11", price="50", quantity="0.26"),  # conflicting quantity
    ]
    result = run(iceberg, namespace, text_table(rows))
    assert (result.accepted, result.duplicates, result.rejected) == (0, 1, 3)
    assert result.rejected_by_reason == {"conflicting_duplicate": 3}
    assert stored_trades(iceberg, namespace) == before  # the stored version is untouched


def test_trades_is_only_ever_appended(iceberg: Catalog, namespace: str) -> None:
    run(iceberg, namespace, text_table([text_row(trade_id="1")]))
    run(iceberg, namespace, text_table([text_row(trade_id="1"), text_row(trade_id="2")]))
    run(iceberg, namespace, text_table([text_row(trade_id="2", price="1")]))
    snapshots = iceberg.load_table((namespace, TRADES)).snapshots()
    assert len(snapshots) == 2
    assert all(s.summary is not None and s.summary.operation == Operation.APPEND for s in snapshots)


# --------------------------------------------------------------------------------------------
# Text length limits


def test_text_length_limits(iceberg: Catalog, namespace: str) -> None:
    at_limit_exchange = "E" * EXCHANGE_LIMIT
    at_limit_symbol = "S" * (SYMBOL_LIMIT - 1) + "€"  # characters, not bytes (66 bytes)
    huge_symbol = "S" * 10_000
    long_exchange = "E" * (EXCHANGE_LIMIT + 1)
    rows = [
        text_row(trade_id="1", exchange=at_limit_exchange, symbol=at_limit_symbol),
        # Surrounding whitespace is stripped before measuring and storing: a re-delivery.
        text_row(trade_id="1", exchange=f"  {at_limit_exchange}\t", symbol=f" {at_limit_symbol} "),
        text_row(trade_id="3", symbol=huge_symbol),
        text_row(trade_id="4", exchange=long_exchange),
        text_row(trade_id="5", exchange=long_exchange, symbol=huge_symbol),  # exchange first
    ]
    result = run(iceberg, namespace, text_table(rows), source="long.csv")
    assert (result.accepted, result.duplicates, result.rejected) == (1, 1, 3)
    assert result.rejected_by_reason == {"exchange_too_long": 2, "symbol_too_long": 1}
    assert [first_reason(r) for r in rows] == [
        None, None, "symbol_too_long", "exchange_too_long", "exchange_too_long"
    ]  # fmt: skip
    ((exchange, symbol, trade_id, *_),) = stored_trades(iceberg, namespace)
    assert (exchange, symbol, trade_id) == (at_limit_exchange, at_limit_symbol, 1)
    rejected = {r["trade_id"]: r for r in read(iceberg, namespace, TRADES_REJECTED)}
    assert set(rejected) == {"3", "4", "5"}
    assert rejected["3"] == {
        **rows[2], "reason": "symbol_too_long", "source": "long.csv", "rejected_at": NOW
    }  # fmt: skip
    assert len(rejected["3"]["symbol"]) == 10_000  # the raw value in full
    assert (rejected["4"]["exchange"], rejected["4"]["reason"]) == (
        long_exchange,
        "exchange_too_long",
    )
    assert (rejected["5"]["exchange"], rejected["5"]["symbol"]) == (long_exchange, huge_symbol)


def test_length_limits_are_the_documented_ones() -> None:
    assert (MAX_EXCHANGE_LENGTH, MAX_SYMBOL_LENGTH) == (EXCHANGE_LIMIT, SYMBOL_LIMIT)
    reasons = list(REASONS)
    assert reasons.index("exchange_too_long") == reasons.index("missing_exchange") + 1
    assert reasons.index("symbol_too_long") == reasons.index("missing_symbol") + 1


# --------------------------------------------------------------------------------------------
# Rejects are recorded once


def _mixed_input() -> list[Row]:
    """Good rows, and bad rows of several reasons, with nulls and a conflicting pair."""
    return [
        text_row(trade_id="1"),
        text_row(trade_id="2", side="sell"),
        text_row(trade_id="3", price="-1"),
        text_row(trade_id="4", price=None),
        text_row(trade_id="4", price=""),  # "" is not null: another reject
        text_row(trade_id="5", exchange=None, symbol=None),
        text_row(trade_id="6", symbol="S" * 10_000),
        text_row(trade_id="7", price="10"),
        text_row(trade_id="7", price="11"),  # conflicts: both versions rejected
        text_row(trade_id=None, ts="2099-01-01T00:00:00Z"),
    ]


@pytest.mark.pyiceberg_only
@on_shapes()  # SQLite, PostgreSQL, REST + S3
def test_same_input_twice_records_its_rejects_once(shape: LocalStack) -> None:
    iceberg, namespace = shape.catalog, shape.tables("ingest").namespace
    rows = _mixed_input()
    first = run(iceberg, namespace, text_table(rows), source="a.csv")
    assert (first.accepted, first.duplicates, first.rejected) == (2, 0, 8)
    assert first.rejects_already_recorded == 0
    rejects = stored_rejects(iceberg, namespace)
    assert rejects == Counter(
        (*(r[c] for c in REQUIRED_COLUMNS), reason)
        for r, reason in zip(rows, (first_reason(r) for r in rows), strict=True)
        if reason is not None or r["trade_id"] == "7"
        for reason in [reason or "conflicting_duplicate"]
    )
    assert sum(rejects.values()) == 8
    trades_before = stored_trades(iceberg, namespace)
    snapshots = snapshot_ids(iceberg, namespace)

    # The same input again, even from another path: nothing is appended to either table.
    again = run(iceberg, namespace, text_table(rows), source="b.csv")
    assert (again.accepted, again.duplicates, again.rejected) == (0, 2, 8)
    assert again.rejected_by_reason == first.rejected_by_reason
    assert again.rejects_already_recorded == 8
    assert again.trades_snapshot_id is None
    assert snapshot_ids(iceberg, namespace) == snapshots  # no commit at all
    assert stored_rejects(iceberg, namespace) == rejects
    assert stored_trades(iceberg, namespace) == trades_before

    # A partly new input: only what is new is appended.
    new_bad = text_row(trade_id="8", quantity="0")
    partly = run(iceberg, namespace, text_table([*rows[2:5], new_bad]), source="c.csv")
    assert (partly.rejected, partly.rejects_already_recorded) == (4, 1 + 2)
    assert stored_rejects(iceberg, namespace) - rejects == Counter(
        {(*new_bad.values(), "non_positive_quantity"): 1}
    )


def test_same_raw_values_with_another_reason_are_another_reject(
    iceberg: Catalog, namespace: str
) -> None:
    future = text_row(trade_id="9", ts="2024-06-01T12:10:00Z")
    first = run(iceberg, namespace, text_table([future]))
    assert first.rejected_by_reason == {"ts_in_future": 1}
    # An hour later the row is no longer in the future, but conflicts with another version;
    # another row in the future makes the stored ts_in_future rejects a candidate match.
    later = NOW + timedelta(hours=1)
    other = {**future, "price": "1"}
    further = text_row(trade_id="10", ts="2024-06-01T14:00:00Z")
    second = run(iceberg, namespace, text_table([future, other, further]), now=later)
    assert (second.rejected_by_reason, second.rejects_already_recorded) == (
        {"conflicting_duplicate": 2, "ts_in_future": 1},
        0,
    )
    assert stored_rejects(iceberg, namespace) == Counter(
        {
            (*future.values(), "ts_in_future"): 1,
            (*future.values(), "conflicting_duplicate"): 1,
            (*other.values(), "conflicting_duplicate"): 1,
            (*further.values(), "ts_in_future"): 1,
        }
    )


def test_identical_bad_rows_in_one_input_are_recorded_once(
    iceberg: Catalog, namespace: str
) -> None:
    bad = text_row(trade_id="3", side="hold")
    no_symbol = text_row(trade_id="4", symbol=None, price=None)
    rows = [
        bad,
        text_row(trade_id="1"),
        bad,
        no_symbol,
        {**bad, "side": "hold "},  # other raw text: another reject
        no_symbol,  # nulls equal nulls
        bad,
    ]
    result = run(iceberg, namespace, text_table(rows))
    assert (result.accepted, result.rejected, result.rejects_already_recorded) == (1, 6, 3)
    assert result.rejected_by_reason == {"invalid_side": 4, "missing_symbol": 2}
    assert stored_rejects(iceberg, namespace) == Counter(
        {
            (*bad.values(), "invalid_side"): 1,
            (*{**bad, "side": "hold "}.values(), "invalid_side"): 1,
            (*no_symbol.values(), "missing_symbol"): 1,
        }
    )
    again = run(iceberg, namespace, text_table(rows))
    assert (again.rejected, again.rejects_already_recorded) == (6, 6)
    assert sum(stored_rejects(iceberg, namespace).values()) == 3


def test_crash_between_the_commits_is_repaired_by_ingesting_again(
    iceberg: Catalog, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _mixed_input()
    append = Table.append

    def crash_on_rejects(self: Table, *args: Any, **kwargs: Any) -> None:
        if self.name()[-1] == TRADES_REJECTED:
            raise RuntimeError("crashed between the commits")
        append(self, *args, **kwargs)

    # Given an ingest that crashed after committing trades, before committing its rejects
    with monkeypatch.context() as patch:
        patch.setattr(Table, "append", crash_on_rejects)
        with pytest.raises(RuntimeError, match="between the commits"):
            run(iceberg, namespace, text_table(rows))
    trades_snapshot, rejects_snapshot = snapshot_ids(iceberg, namespace)
    assert trades_snapshot is not None and rejects_snapshot is None
    trades_before = stored_trades(iceberg, namespace)
    assert {trade_id for _, _, trade_id, *_ in trades_before} == {1, 2}

    # When the same input is ingested again
    repair = run(iceberg, namespace, text_table(rows))
    # Then no trade is appended and every reject is appended once
    assert (repair.accepted, repair.duplicates, repair.rejected) == (0, 2, 8)
    assert repair.rejects_already_recorded == 0
    assert snapshot_ids(iceberg, namespace)[0] == trades_snapshot
    assert stored_trades(iceberg, namespace) == trades_before
    rejects = stored_rejects(iceberg, namespace)
    assert sum(rejects.values()) == 8 and max(rejects.values()) == 1

    # And a third run changes nothing
    snapshots = snapshot_ids(iceberg, namespace)
    third = run(iceberg, namespace, text_table(rows))
    assert (third.accepted, third.rejects_already_recorded) == (0, 8)
    assert snapshot_ids(iceberg, namespace) == snapshots
    assert stored_rejects(iceberg, namespace) == rejects


def test_rejects_with_many_distinct_values_are_recorded_once(
    iceberg: Catalog, namespace: str
) -> None:
    # More distinct values than the scan filter lists: it filters on their ranges instead.
    rows = [
        text_row(trade_id=str(i), exchange=f"x{i % 300}", symbol=f"S{i}-USD", price="0")
        for i in range(600)
    ]
    first = run(iceberg, namespace, text_table(rows))
    assert (first.rejected, first.rejects_already_recorded) == (600, 0)
    again = run(iceberg, namespace, text_table([*rows, text_row(price="0")]))
    assert (again.rejected, again.rejects_already_recorded) == (601, 600)
    assert sum(stored_rejects(iceberg, namespace).values()) == 601


def test_reject_scan_skips_the_files_of_other_inputs(iceberg: Catalog, namespace: str) -> None:
    # Three inputs of 300 bad rows each (more values than an In list), on different days.
    for day in (1, 2, 3):
        rows = [
            text_row(trade_id=str(day * 10_000 + i), price="0", ts=f"2024-05-0{day}T10:00:00Z")
            for i in range(300)
        ]
        run(iceberg, namespace, text_table(rows), source=f"day-{day}")
    rejected = iceberg.load_table((namespace, TRADES_REJECTED))
    everything = rejected.scan().to_arrow()
    assert len(list(rejected.scan().plan_files())) == 3
    day_2 = everything.filter(pc.equal(everything["source"], "day-2"))
    batch = day_2.select(list(REJECT_IDENTITY))
    scan = rejected.scan(row_filter=reject_filter(batch), selected_fields=REJECT_IDENTITY)
    assert len(list(scan.plan_files())) == 1
    assert scan.to_arrow().sort_by("trade_id").equals(batch.sort_by("trade_id"))


def test_new_rejects_matches_a_set_based_restatement() -> None:
    # Many distinct values per column, so the row keys are renumbered to stay in int64.
    rng = random.Random(7)
    names = (*REQUIRED_COLUMNS, "reason")

    def value(column: str) -> str | None:
        if rng.random() < 0.1:
            return None
        return f"{column}{rng.randrange(4 if column in ('side', 'reason') else 3000)}"

    def rows(n: int) -> list[tuple[str | None, ...]]:
        return [tuple(value(c) for c in names) for _ in range(n)]

    # More stored rows than rejects, so the stored ones are filtered before the comparison.
    stored = rows(6000)
    batch = rows(3000) + rng.sample(stored, 500)
    batch += rng.sample(batch, 500)  # repeats within the input
    rng.shuffle(batch)

    def table(values: list[tuple[str | None, ...]]) -> pa.Table:
        columns = {c: pa.array([v[i] for v in values], pa.string()) for i, c in enumerate(names)}
        return pa.table(columns)

    got = new_rejects(table(batch), table(stored)).tolist()
    seen = set(stored)
    expected = []
    for row in batch:
        expected.append(row not in seen)
        seen.add(row)
    assert got == expected
    assert 0 < sum(got) < len(batch)
    assert new_rejects(table(batch), table([])).tolist() == [
        row not in batch[:i] for i, row in enumerate(batch)
    ]


# --------------------------------------------------------------------------------------------
# Randomised comparison with the oracle


def _random_rows(
    rng: random.Random, n: int, fault_rate: float, replay: list[Row] | None = None
) -> list[Row]:
    """Random rows; a quarter of them are copies of ``replay`` rows when it is given."""
    bad_values: dict[str, list[str | None]] = {
        "exchange": ["", "  ", None, "X" * (EXCHANGE_LIMIT + 1), " " + "X" * 200],
        "symbol": ["", None, "S" * (SYMBOL_LIMIT + 1), "Ü" * 10_000],
        "trade_id": ["", "-3", "2.5", None],
        "price": ["", "nan", "0", "-1", "1.123456789", "12345678901", None],
        "quantity": ["", "inf", "0", "0.000000001", None],
        "side": ["", "hold", None],
        "ts": ["", "2030-01-01T00:00:00Z", "1990-01-01T00:00:00", "2024-05-01T00:00:00.1234567"],
    }
    rows: list[Row] = []
    for _ in range(n):
        if replay and rng.random() < 0.25:
            rows.append(dict(rng.choice(replay)))
            continue
        row = text_row(
            exchange=rng.choice(["demo", " demo", "other", "E" * EXCHANGE_LIMIT]),
            symbol=rng.choice(["BTC-USD", "ETH-USD", f" {'L' * SYMBOL_LIMIT} "]),
            trade_id=str(rng.randrange(40)),
            price=rng.choice(["10", "10.0", "10.5", "0.00000001", "9999999999.99999999"]),
            quantity=rng.choice(["1", "2.5E-3", "0.1"]),
            side=rng.choice(["buy", "SELL", " sell "]),
            ts=rng.choice(
                ["2024-05-01T00:00:00Z", "2024-05-01T02:00+02:00", "2024-05-01 00:00:01"]
            ),
        )
        if rng.random() < fault_rate:
            column = rng.choice(list(bad_values))
            row[column] = rng.choice(bad_values[column])
        rows.append(row)
    return rows


def test_random_batches_match_the_oracle(iceberg: Catalog, namespace: str) -> None:
    rng = random.Random(20240601)
    oracle = _Oracle()
    seen: list[Row] = []
    already_recorded = 0
    # A batch without faults takes the fast parsing path; faulty ones the general path. Later
    # batches replay rows of earlier ones, good and bad, as a re-delivered file does.
    for batch, fault_rate in enumerate((0.3, 0.0, 0.3, 0.3)):
        rows = _random_rows(rng, 400, fault_rate, replay=seen)
        seen += rows
        expected = oracle.ingest(rows)
        before = stored_trades(iceberg, namespace)
        rejects_before = stored_rejects(iceberg, namespace)
        # Several chunks, as a streamed or concatenated input arrives.
        raw = pa.concat_tables([text_table(rows[:150]), text_table(rows[150:])])
        result = run(iceberg, namespace, raw, source=f"batch-{batch}")

        assert result.accepted == len(expected.accepted)
        assert result.duplicates == expected.duplicates
        assert result.rejected_by_reason == dict(Counter(expected.reasons)), batch
        assert result.rejects_already_recorded == expected.already_recorded, batch
        new = stored_trades(iceberg, namespace) - before
        assert {
            (e, s, i, *p)
            for (e, s, i), p in ((key_of(r), payload_of(r)) for r in expected.accepted)
        } == new
        rejects = stored_rejects(iceberg, namespace)
        assert rejects - rejects_before == Counter(expected.appended_rejects), batch
        assert sum(rejects.values()) == sum(rejects_before.values()) + len(
            expected.appended_rejects
        )
        already_recorded += result.rejects_already_recorded
    assert len(read(iceberg, namespace, TRADES)) == len(oracle.stored)
    assert stored_rejects(iceberg, namespace) == Counter(oracle.recorded)
    # The rows exercise what they should: both new limits, and rejects already recorded.
    reasons = {reason for *_, reason in oracle.recorded}
    assert {"exchange_too_long", "symbol_too_long", "conflicting_duplicate"} <= reasons
    assert already_recorded > 0


# --------------------------------------------------------------------------------------------
# File formats and typed inputs


def test_parquet_file_with_typed_columns(iceberg: Catalog, namespace: str, tmp_path: Path) -> None:
    table = pa.table(
        {
            "exchange": pa.array(["demo", "demo", "demo"]).dictionary_encode(),
            "symbol": pa.array(["BTC-USD", "ETH-USD", "SOL-USD"], pa.large_string()),
            "trade_id": pa.array([1, 2, 3], pa.uint32()),
            "price": pa.array([D("65000.12345678"), D("3000"), D("-1")], pa.decimal128(18, 8)),
            "quantity": pa.array([D("0.5"), D("1.25"), D("2")], pa.decimal128(10, 2)),
            "side": ["buy", "sell", "buy"],
            "ts": pa.array([datetime(2024, 5, 1, h) for h in (10, 11, 12)], pa.timestamp("ms")),
            "venue_fee": [0.1, 0.2, 0.3],  # an extra column, ignored
            "ingested_at": pa.array([datetime(1999, 1, 1)] * 3, pa.timestamp("us")),  # overwritten
        }
    )  # fmt: skip
    path = tmp_path / "trades.parquet"
    pq.write_table(table, path)
    result = ingest_file(iceberg, namespace, path, now=NOW)
    assert (result.accepted, result.rejected) == (2, 1)
    rows = sorted(read(iceberg, namespace, TRADES), key=lambda r: r["trade_id"])
    got = [(r["trade_id"], r["price"], r["quantity"], r["ts"], r["ingested_at"]) for r in rows]
    assert got == [
        (1, D("65000.12345678"), D("0.5"), datetime(2024, 5, 1, 10, tzinfo=UTC), NOW),
        (2, D("3000"), D("1.25"), datetime(2024, 5, 1, 11, tzinfo=UTC), NOW),
    ]
    (rejected,) = read(iceberg, namespace, TRADES_REJECTED)
    assert (rejected["reason"], rejected["price"], rejected["source"]) == (
        "non_positive_price",
        "-1.00000000",
        str(path),
    )


def test_csv_file_is_parsed_as_text(iceberg: Catalog, namespace: str, tmp_path: Path) -> None:
    path = tmp_path / "trades.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["note", *REQUIRED_COLUMNS])
        writer.writerow(
            ["a, quoted note", "demo", "BTC-USD", "1", "0.1", "3", "buy", "2024-05-01T10:00:00Z"]
        )
        writer.writerow(
            ["", "demo", "BTC-USD", "2", "65000.00000001", ".5", "Sell", "2024-05-01 10:00:00.5"]
        )
        writer.writerow(["", "demo", "BTC-USD", "3", "", "1", "buy", "2024-05-01T10:00:00Z"])
    result = ingest_file(iceberg, namespace, path, now=NOW)
    assert (result.accepted, result.rejected_by_reason) == (2, {"missing_price": 1})
    rows = sorted(read(iceberg, namespace, TRADES), key=lambda r: r["trade_id"])
    assert [(r["price"], r["quantity"], r["side"], r["ts"]) for r in rows] == [
        (Decimal("0.1"), Decimal("3"), "buy", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        (D("65000.00000001"), D("0.5"), "sell", datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)),
    ]
    (rejected,) = read(iceberg, namespace, TRADES_REJECTED)
    assert rejected["price"] == "" and rejected["trade_id"] == "3"


def test_floats_convert_through_shortest_text(iceberg: Catalog, namespace: str) -> None:
    prices = [0.1, 1e-7, 123.456, 0.1 + 0.2, 2.5e-9, 1e10]
    table = pa.table(
        {
            "exchange": ["demo"] * 6,
            "symbol": ["BTC-USD"] * 6,
            "trade_id": pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),  # integral floats are ids
            "price": pa.array(prices, pa.float64()),
            "quantity": pa.array([0.1] * 6, pa.float32()),  # float32 0.1 is "0.1" too
            "side": ["buy"] * 6,
            "ts": pa.array([datetime(2024, 5, 1, 10)] * 6, pa.timestamp("us", tz="UTC")),
        }
    )
    result = run(iceberg, namespace, table)
    assert result.rejected_by_reason == {"price_precision": 3}  # 0.30000000000000004 etc.
    stored = {r["trade_id"]: (r["price"], r["quantity"]) for r in read(iceberg, namespace, TRADES)}
    assert stored == {
        1: (Decimal("0.10000000"), Decimal("0.1")),
        2: (Decimal("0.00000010"), Decimal("0.1")),
        3: (Decimal("123.456"), Decimal("0.1")),
    }
    assert str(stored[1][0]) == "0.10000000"
    # The oracle derives the same verdicts from Python's own shortest repr.
    assert [first_reason({**text_row(), "price": p}) for p in prices] == [
        None, None, None, "price_precision", "price_precision", "price_precision"
    ]  # fmt: skip


def test_timestamp_inputs(iceberg: Catalog, namespace: str) -> None:
    ns_values = [1_714_557_600_000_000_000, 1_714_557_600_000_000_001]  # 2024-05-01T10:00Z (+1 ns)
    table = pa.table(
        {
            "exchange": ["demo"] * 2,
            "symbol": ["BTC-USD"] * 2,
            "trade_id": [1, 2],
            "price": pa.array([1, 2], pa.int64()),  # integers are exact prices too
            "quantity": pa.array([1, 1], pa.int8()),
            "side": ["buy", "sell"],
            "ts": pa.array(ns_values, pa.timestamp("ns", tz="America/New_York")),
        }
    )
    result = run(iceberg, namespace, table)
    assert result.rejected_by_reason == {"ts_precision": 1}
    (row,) = read(iceberg, namespace, TRADES)
    assert (row["ts"], row["price"]) == (datetime(2024, 5, 1, 10, tzinfo=UTC), Decimal(1))

    texts = ["2024-05-01T12:00:00.25+02:00", "2024-05-01t10:00Z", "2024-05-01 05:30:00-0430"]
    run(
        iceberg,
        namespace,
        text_table(text_row(trade_id=str(10 + i), ts=t) for i, t in enumerate(texts)),
    )
    got = {r["trade_id"]: r["ts"] for r in read(iceberg, namespace, TRADES) if r["trade_id"] >= 10}
    assert got == {
        10: datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=UTC),
        11: datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
        12: datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
    }


def test_trade_id_types(iceberg: Catalog, namespace: str) -> None:
    table = pa.table(
        {
            "exchange": ["demo"] * 3,
            "symbol": ["BTC-USD"] * 3,
            "trade_id": pa.array([5, 2**63, None], pa.uint64()),
            "price": ["1"] * 3,
            "quantity": ["1"] * 3,
            "side": ["buy"] * 3,
            "ts": ["2024-05-01T10:00:00Z"] * 3,
        }
    )
    result = run(iceberg, namespace, table)
    assert result.rejected_by_reason == {"invalid_trade_id": 1, "missing_trade_id": 1}
    assert [r["trade_id"] for r in read(iceberg, namespace, TRADES)] == [5]


def test_decimals_stay_exact(iceberg: Catalog, namespace: str) -> None:
    values = ["12345678.12345678", "0.00000001", "9999999999.99999999", "0.3", "1.00000001"]
    rows = [text_row(trade_id=str(i), price=v, quantity=v) for i, v in enumerate(values)]
    run(iceberg, namespace, text_table(rows))
    stored = {r["trade_id"]: r for r in read(iceberg, namespace, TRADES)}
    for i, v in enumerate(values):
        assert stored[i]["price"] == Decimal(v) and stored[i]["quantity"] == Decimal(v)
        assert stored[i]["price"].as_tuple().exponent == -8  # DECIMAL(18, 8), never a float


# --------------------------------------------------------------------------------------------
# Schema errors: nothing is written


@pytest.fixture
def populated(iceberg: Catalog, namespace: str) -> Iterator[tuple[str, tuple[int | None, ...]]]:
    run(iceberg, namespace, text_table([text_row(), text_row(trade_id="2", side="?")]))
    before = snapshot_ids(iceberg, namespace)
    assert None not in before
    yield namespace, before
    assert snapshot_ids(iceberg, namespace) == before, "a failed ingest wrote something"


def test_missing_column_names_it(iceberg: Catalog, populated: tuple[str, Any]) -> None:
    namespace, _ = populated
    raw = text_table([text_row(trade_id="3")]).drop_columns(["quantity"])
    with pytest.raises(SchemaError, match="'quantity'"):
        run(iceberg, namespace, raw)


def test_missing_csv_column_names_it(
    iceberg: Catalog, populated: tuple[str, Any], tmp_path: Path
) -> None:
    namespace, _ = populated
    path = tmp_path / "no_side.csv"
    path.write_text(
        "exchange,symbol,trade_id,price,quantity,ts\ndemo,BTC-USD,3,1,1,2024-05-01T10:00:00Z\n"
    )
    with pytest.raises(SchemaError, match="'side'"):
        ingest_file(iceberg, namespace, path, now=NOW)


def test_non_numeric_parquet_price_names_it(
    iceberg: Catalog, populated: tuple[str, Any], tmp_path: Path
) -> None:
    namespace, _ = populated
    table = text_table([text_row(trade_id="3")]).set_column(
        REQUIRED_COLUMNS.index("price"), "price", pa.array([True])
    )
    path = tmp_path / "bool_price.parquet"
    pq.write_table(table, path)
    with pytest.raises(SchemaError, match="'price' has type bool"):
        ingest_file(iceberg, namespace, path, now=NOW)


def test_non_numeric_csv_value_names_column_value_and_row(
    iceberg: Catalog, populated: tuple[str, Any], tmp_path: Path
) -> None:
    namespace, _ = populated
    path = tmp_path / "bad_price.csv"
    path.write_text(
        "exchange,symbol,trade_id,price,quantity,side,ts\n"
        "demo,BTC-USD,3,1,1,buy,2024-05-01T10:00:00Z\n"
        "demo,BTC-USD,4,12O.5,1,buy,2024-05-01T10:00:00Z\n"
    )
    with pytest.raises(SchemaError, match=r"'price' is not numeric: row 2 .*'12O\.5'"):
        ingest_file(iceberg, namespace, path, now=NOW)


@pytest.mark.parametrize("bad_ts", ["yesterday", "2024-02-30T00:00:00Z", "2024-05-01"])
def test_unparseable_ts_names_it(iceberg: Catalog, populated: tuple[str, Any], bad_ts: str) -> None:
    namespace, _ = populated
    rows = [text_row(trade_id="3"), text_row(trade_id="4", ts=bad_ts)]
    with pytest.raises(SchemaError, match=rf"'ts' is not a timestamp: row 2 .*'{bad_ts}'"):
        run(iceberg, namespace, text_table(rows))


def test_epoch_number_ts_is_a_schema_error(iceberg: Catalog, populated: tuple[str, Any]) -> None:
    namespace, _ = populated
    raw = text_table([text_row(trade_id="3")]).set_column(6, "ts", pa.array([1714557600]))
    with pytest.raises(SchemaError, match="'ts' has type int64"):
        run(iceberg, namespace, raw)


def test_empty_and_all_rejected_inputs(iceberg: Catalog, namespace: str) -> None:
    empty = run(iceberg, namespace, text_table([]))
    assert (empty.rows_in, empty.trades_snapshot_id) == (0, None)
    bad = run(iceberg, namespace, text_table([text_row(side="?"), text_row(price="0")]))
    assert (bad.accepted, bad.rejected, bad.trades_snapshot_id) == (0, 2, None)
    assert snapshot_ids(iceberg, namespace)[0] is None


def test_unknown_suffix_is_a_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "trades.json"
    path.write_text("{}")
    with pytest.raises(SchemaError, match=r"'\.json'"):
        read_trades_file(path)


# --------------------------------------------------------------------------------------------
# Demo data


def _demo(**kwargs: Any) -> pa.Table:
    start = datetime(2024, 5, 1, 23, 0, tzinfo=UTC)  # crosses midnight: two partitions
    defaults: dict[str, Any] = dict(
        start=start, end=start + timedelta(hours=2), symbols=("BTC-USD", "DOGE-USD", "NEW-USD"),
        trades_per_minute=6, late_fraction=0.02, duplicate_fraction=0.02, bad_rows=12,
    )  # fmt: skip
    return demo_data.demo_trades(**{**defaults, **kwargs})


def test_demo_data_ingests_as_the_oracle_predicts(iceberg: Catalog, namespace: str) -> None:
    table = _demo()
    rows = table.to_pylist()
    now = datetime(2024, 5, 2, 1, 0, tzinfo=UTC)
    expected = _Oracle().ingest(rows, now)
    expected_accepted, expected_duplicates, expected_reasons = (
        expected.accepted,
        expected.duplicates,
        expected.reasons,
    )

    # Sliced chunks: values start at a buffer offset, as in a Parquet file with row groups.
    chunked = pa.concat_tables([table.slice(0, 333), table.slice(333)])
    result = run(iceberg, namespace, chunked, now=now, source="demo")

    assert result.accepted == len(expected_accepted)
    assert result.duplicates == expected_duplicates
    assert result.rejected_by_reason == dict(Counter(expected_reasons))
    # 12 bad rows cycle through 10 kinds, one of them a conflicting duplicate, which also
    # rejects the original it conflicts with.
    assert result.rejected == 12 + 1
    assert result.rejected_by_reason["conflicting_duplicate"] == 2
    meta = table.schema.metadata
    assert (result.accepted, result.duplicates, result.rejected) == (
        int(meta[demo_data.EXPECTED_ACCEPTED_KEY]),
        int(meta[demo_data.EXPECTED_DUPLICATES_KEY]),
        int(meta[demo_data.EXPECTED_REJECTED_KEY]),
    )
    assert stored_trades(iceberg, namespace) == {
        (e, s, i, *p) for (e, s, i), p in ((key_of(r), payload_of(r)) for r in expected_accepted)
    }
    assert result.rejects_already_recorded == expected.already_recorded == 0
    rejects = stored_rejects(iceberg, namespace)
    assert sum(rejects.values()) == result.rejected
    again = run(iceberg, namespace, table, now=now)  # idempotent: everything is known
    assert (again.accepted, again.duplicates) == (0, result.accepted + result.duplicates)
    assert (again.rejected, again.rejects_already_recorded) == (result.rejected, result.rejected)
    assert stored_rejects(iceberg, namespace) == rejects


def test_the_demo_feed_continues_where_it_stopped_without_new_spurious_rejects(
    iceberg: Catalog, namespace: str
) -> None:
    end = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)

    def feed(until: datetime) -> IngestResult | None:
        return demo_data.ingest_demo_feed(
            iceberg, namespace, end=until, hours=48, symbols=3, trades_per_minute=5, seed=7
        )

    first = feed(end)
    assert first is not None and first.rejected == demo_data.DEMO_BAD_ROWS + 1
    # Nothing new up to the same end
    again = feed(end)
    assert again is None or again.rows_in == 0
    # Ten minutes later: only those ten minutes, no fresh batch of malformed rows
    later = feed(end + timedelta(minutes=10))
    assert later is not None and later.accepted > 0 and later.rejected == 0
    position = demo_data.feed_position(iceberg.load_table((namespace, "trades")))
    assert position is not None and end <= position[0] < end + timedelta(minutes=10)


def test_demo_data_looks_like_a_feed() -> None:
    table = _demo(bad_rows=0)
    assert table.schema.field("price").type == pa.decimal128(18, 8)
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    rows = table.to_pylist()
    late = int(table.schema.metadata[demo_data.LATE_ROWS_KEY])
    assert late > 0

    assert all(r["price"] > 0 and r["quantity"] > 0 for r in rows)
    assert all(r["price"].quantize(EIGHT_PLACES) == r["price"] for r in rows)
    ts = [r["ts"] for r in rows]
    start, end = datetime(2024, 5, 1, 23, tzinfo=UTC), datetime(2024, 5, 2, 1, tzinfo=UTC)
    assert all(start <= t < end for t in ts)
    assert any(t.second == 0 and t.microsecond == 0 for t in ts)  # on a minute boundary
    by_symbol_ts = Counter((r["symbol"], r["ts"]) for r in rows)
    assert max(by_symbol_ts.values()) > 1  # ties
    minutes = {t.replace(second=0, microsecond=0) for t in ts}
    assert len(minutes) < 120  # some minutes are empty (3 symbols, 6 trades a minute each)
    assert any(b < a for a, b in itertools.pairwise(ts))  # out of order
    tail = ts[-late:]
    assert min(tail) < max(ts[: len(ts) - late]) - timedelta(minutes=30)  # really late
    assert len(rows) > len({(r["symbol"], r["trade_id"]) for r in rows})  # duplicates

    unique = sorted({(r["ts"], r["trade_id"]) for r in rows})
    ids = [trade_id for _, trade_id in unique]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # ids increase with ts
    # Known pairs trade at realistic levels; unknown ones get a stable made-up level.
    btc = [r["price"] for r in rows if r["symbol"] == "BTC-USD"]
    assert Decimal(30_000) < min(btc) and max(btc) < Decimal(130_000)
    assert _demo(bad_rows=0).equals(table)


def test_demo_bad_rows_cover_their_kinds() -> None:
    table = _demo(bad_rows=len(demo_data.BAD_ROW_KINDS))
    now = datetime(2024, 5, 2, 1, tzinfo=UTC)
    reasons = Counter(first_reason(r, now) for r in table.to_pylist())
    assert {
        "missing_symbol", "non_positive_price", "non_positive_quantity", "ts_in_future",
        "invalid_side", "missing_exchange", "ts_too_old", "missing_trade_id", "missing_price",
    } <= set(reasons)  # fmt: skip


def test_demo_rejects_bad_arguments() -> None:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="not after start"):
        demo_data.demo_trades(start=start, end=start)
    with pytest.raises(ValueError, match="before 2000"):
        demo_data.demo_trades(start=datetime(1999, 1, 1, tzinfo=UTC), end=start)


def test_write_demo_file_round_trips(tmp_path: Path) -> None:
    table = _demo(bad_rows=3)
    path = demo_data.write_demo_file(tmp_path / "nested" / "demo.parquet", table)
    back = read_trades_file(path)
    # Text columns come back dictionary-encoded (parsed once per distinct value), same values.
    assert all(pa.types.is_dictionary(back[name].type) for name in ("exchange", "symbol", "side"))
    assert back.cast(table.schema).equals(table) and back.schema.metadata == table.schema.metadata
