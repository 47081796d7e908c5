"""Exchange file formats and the landing zone, through PyIceberg only (no JVM).

Files are written here the way Binance and Tardis.dev publish them; what is stored is compared
with the trades the files were written from, never with the reader's own output.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from typer.testing import CliRunner

from cli.main import app
from core.tables import TRADES, TRADES_REJECTED, ensure_tables
from infra.catalog import open_catalog
from ingest.formats import read_feed, symbol_of
from ingest.landing import Landing, run_pass
from ingest.reading import SchemaError
from settings import CatalogType, Settings
from tests.support.feeds import tardis_lines, write_binance_zip, write_tardis_gz
from tests.support.oracle import Trade

FEB = datetime(2026, 2, 1, tzinfo=UTC)


def trades_of(
    exchange: str, symbol: str, n: int, start: datetime, first_id: int, step_us: int = 1
) -> list[Trade]:
    """Trades with exact prices and quantities; ``step_us`` 1000 gives whole milliseconds."""
    rng = random.Random(f"{exchange}{symbol}{first_id}")
    return [
        Trade(
            exchange,
            symbol,
            first_id + i,
            Decimal(rng.randrange(10**6, 10**9)) / 100,
            Decimal(rng.randrange(1, 10**9)) / 10**8,
            rng.choice(["buy", "sell"]),
            start + timedelta(microseconds=step_us * rng.randrange(3_600_000_000 // step_us)),
        )
        for i in range(n)
    ]


def stored_key(t: Trade) -> tuple[Any, ...]:
    return (t.exchange, t.symbol, t.trade_id, t.price, t.quantity, t.side, t.ts)


def feed_rows(table: pa.Table) -> set[tuple[Any, ...]]:
    """Rows read from a file, as the oracle's tuples (text values parsed here)."""
    return {
        (r["exchange"], r["symbol"], int(r["trade_id"]), Decimal(r["price"]),
         Decimal(r["quantity"]), r["side"], r["ts"])
        for r in table.to_pylist()
    }  # fmt: skip


def stored_trades(catalog: Catalog, namespace: str) -> list[tuple[Any, ...]]:
    rows = catalog.load_table((namespace, TRADES)).scan().to_arrow().to_pylist()
    return [
        (r["exchange"], r["symbol"], r["trade_id"], r["price"], r["quantity"], r["side"], r["ts"])
        for r in rows
    ]


def opener(path: Path) -> Any:
    return lambda: path.open("rb")


# --------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize("unit", ["us", "ms"])
def test_a_binance_spot_zip_without_header_is_read_exactly(tmp_path: Path, unit: str) -> None:
    # Given Binance spot trades, in microseconds (2025 on) or milliseconds (before)
    start = FEB if unit == "us" else datetime(2024, 3, 1, tzinfo=UTC)
    trades = trades_of("binance", "BTCUSDT", 50, start, 7_000_000_000, 1 if unit == "us" else 1000)
    path = write_binance_zip(tmp_path / f"BTCUSDT-trades-{start:%Y-%m-%d}.zip", trades, unit=unit)
    # When read with the format detected
    feed = read_feed(opener(path), path.name)
    # Then every trade is there, exactly, the taker's side from isBuyerMaker
    assert feed.format == "binance-trades"
    assert feed_rows(feed.table) == {stored_key(t) for t in trades}


def test_aggtrades_futures_and_tardis_files_are_detected_and_read(tmp_path: Path) -> None:
    agg = trades_of("binance", "SOLUSDT", 20, FEB, 100)
    fut = trades_of("binance-futures", "ETHUSDT", 20, FEB, 200, step_us=1000)
    tardis = trades_of("bybit", "BTCUSDT", 20, FEB, 300)
    files = {
        "binance-aggtrades": (
            write_binance_zip(tmp_path / "SOLUSDT-aggTrades-2026-02-01.zip", agg, "aggTrades"),
            agg,
        ),
        "binance-futures-trades": (
            write_binance_zip(tmp_path / "ETHUSDT-trades-2026-02.zip", fut, "futures", "ms"),
            fut,
        ),
        "tardis-trades": (
            write_tardis_gz(
                tmp_path / "bybit_trades_2026-02-01_BTCUSDT.csv.gz", tardis_lines(tardis)
            ),
            tardis,
        ),
    }
    for fmt, (path, trades) in files.items():
        feed = read_feed(opener(path), path.name)
        assert feed.format == fmt
        assert feed_rows(feed.table) == {stored_key(t) for t in trades}, fmt


def test_exchange_and_format_can_be_given(tmp_path: Path) -> None:
    trades = trades_of("binance-us", "BTCUSDT", 5, FEB, 1)
    path = write_binance_zip(tmp_path / "BTCUSDT-trades-2026-02-01.zip", trades)
    feed = read_feed(opener(path), path.name, "binance-trades", exchange="binance-us")
    assert feed_rows(feed.table) == {stored_key(t) for t in trades}
    assert symbol_of("data/ETHBTC-aggTrades-2025-12-31.zip") == "ETHBTC"


def test_an_unrecognised_layout_fails_in_one_line_naming_columns_and_formats(
    tmp_path: Path,
) -> None:
    path = tmp_path / "BTCUSDT-trades-2026-02-01.csv"
    path.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(SchemaError) as raised:
        read_feed(opener(path), path.name)
    message = str(raised.value)
    assert "\n" not in message
    assert "'1', '2', '3'" in message and "binance-aggtrades" in message
    assert "tardis-trades" in message and "--format" in message


def test_a_zip_of_two_files_and_a_damaged_gz_fail_in_one_line(tmp_path: Path) -> None:
    two = tmp_path / "BTCUSDT-trades-2026-02-01.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a.csv", "1,2\n")
        archive.writestr("b.csv", "1,2\n")
    with pytest.raises(SchemaError, match="exactly one CSV file"):
        read_feed(opener(two), two.name)
    damaged = tmp_path / "x.csv.gz"
    damaged.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(SchemaError, match=r"x\.csv\.gz"):
        read_feed(opener(damaged), damaged.name)


# --------------------------------------------------------------------------------------------
# The landing zone (PyIceberg only)


@pytest.mark.parametrize(
    "compression",
    [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_BZIP2],
    ids=["deflated", "stored", "bzip2"],
)
def test_a_zip_member_is_read_exactly_however_it_is_stored(
    tmp_path: Path, compression: int
) -> None:
    # Given a zip whose member is deflated (Binance's), stored as it is, or bzip2-compressed
    trades = trades_of("binance", "BTCUSDT", 3000, FEB, 7_000_000_000)
    path = write_binance_zip(
        tmp_path / "BTCUSDT-trades-2026-02-01.zip", trades, compression=compression
    )
    # When read from a Python file and from Arrow's (what a landing zone, local or S3, opens)
    for open_file in (opener(path), partial(Landing.at(str(tmp_path)).open, str(path))):
        feed = read_feed(open_file, path.name)
        # Then every trade is there, exactly
        assert feed_rows(feed.table) == {stored_key(t) for t in trades}


def _damaged_files(where: Path) -> dict[str, tuple[Path, str]]:
    """Archives damaged in each way a download can be: (file, what its error must say)."""
    trades = trades_of("binance", "BTCUSDT", 3000, FEB, 1)
    data = write_binance_zip(where / "deflated.zip", trades).read_bytes()
    stored = write_binance_zip(
        where / "stored.zip", trades, compression=zipfile.ZIP_STORED
    ).read_bytes()
    crc = data.rfind(b"PK\x01\x02") + 16  # in the member's entry of the central directory
    gz = gzip.compress("\n".join(tardis_lines(trades)).encode())
    cases = {
        "flipped deflate bytes": (_flipped(data, len(data) // 2, 64), "damaged"),
        "flipped bytes near the start": (_flipped(data, 100, 64), "damaged"),
        "a wrong CRC-32": (_flipped(data, crc, 1), "damaged"),
        "a flipped stored byte": (_flipped(stored, len(stored) // 2, 1), "damaged"),
        "cut short": (data[: len(data) // 2], "damaged"),
        "an empty file": (b"", "damaged"),
        "no member": (_zip_of(), "holds nothing"),
        "two members": (_zip_of("a.csv", "b.csv"), "holds a.csv, b.csv"),
        "a cut .gz": (gz[: len(gz) * 2 // 3], "damaged"),
        "a .gz with a wrong CRC-32": (_flipped(gz, len(gz) - 8, 1), "damaged"),
    }
    files = {}
    for i, (case, (content, says)) in enumerate(cases.items()):
        suffix = ".csv.gz" if ".gz" in case else ".zip"
        path = where / f"case{i}" / f"BTCUSDT-trades-2026-02-01{suffix}"
        path.parent.mkdir()
        path.write_bytes(content)
        files[case] = (path, says)
    return files


def _flipped(data: bytes, at: int, n: int) -> bytes:
    out = bytearray(data)
    for i in range(at, at + n):
        out[i] ^= 0x5A
    return bytes(out)


def _zip_of(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, "1,2\n")
    return buffer.getvalue()


def test_a_damaged_archive_fails_in_one_line_naming_it(tmp_path: Path) -> None:
    for case, (path, says) in _damaged_files(tmp_path).items():
        for open_file in (opener(path), partial(Landing.at(str(path.parent)).open, str(path))):
            with pytest.raises(SchemaError) as raised:
                read_feed(open_file, str(path))
            message = str(raised.value)
            assert "\n" not in message and str(path) in message and says in message, case


@pytest.fixture(scope="module")
def iceberg(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    settings = Settings(data_dir=tmp_path_factory.mktemp("feeds"), catalog_type=CatalogType.SQLITE)
    return open_catalog(settings)


@pytest.fixture
def namespace(iceberg: Catalog) -> str:
    name = f"feeds_{uuid.uuid4().hex[:10]}"
    ensure_tables(iceberg, name)
    return name


def one_pass(catalog: Catalog, namespace: str, where: Path, **bounds: int) -> Any:
    limits = {"max_files": 100, "max_bytes": 10**9, "batch_rows": 10**6, **bounds}
    return run_pass(catalog, namespace, Landing.at(str(where)), **limits)  # type: ignore[arg-type]


def _age(path: Path, seconds: int) -> None:
    """Make ``path`` older (the landing zone takes files oldest first)."""
    when = datetime.now(UTC).timestamp() - seconds
    os.utime(path, (when, when))


def test_a_pass_ingests_each_file_once_a_bad_one_is_recorded_and_a_second_pass_does_nothing(
    iceberg: Catalog, namespace: str, tmp_path: Path
) -> None:
    # Given three files, the middle one (by age) not trades at all
    first = trades_of("binance", "BTCUSDT", 30, FEB, 1)
    last = trades_of("binance", "ETHUSDT", 30, FEB, 1)
    a = write_binance_zip(tmp_path / "BTCUSDT-trades-2026-02-01.zip", first)
    bad = tmp_path / "notes.csv"
    bad.write_text("hello,world\n")
    c = write_binance_zip(tmp_path / "ETHUSDT-trades-2026-02-01.zip", last)
    for path, age in ((a, 30), (bad, 20), (c, 10)):
        _age(path, age)
    # When one pass runs
    done = one_pass(iceberg, namespace, tmp_path)
    # Then both good files are in, the bad one is recorded with its reason
    assert [r.identity.path for r in done.ingested] == [str(a), str(c)]
    assert [r.identity.path for r in done.failed] == [str(bad)]
    assert "missing required column" in (done.failed[0].reason or "")
    assert sorted(stored_trades(iceberg, namespace)) == sorted(map(stored_key, first + last))
    # And a second pass ingests nothing, and reads no file again
    again = one_pass(iceberg, namespace, tmp_path)
    assert (again.ingested, again.failed, again.accepted) == ([], [], 0)
    states = {s.entry.path: s.state for s in _status(iceberg, namespace, tmp_path)}
    assert states == {str(a): "ingested", str(bad): "failed", str(c): "ingested"}


def test_a_pass_records_a_damaged_zip_as_failed_and_goes_on(
    iceberg: Catalog, namespace: str, tmp_path: Path
) -> None:
    # Given a good zip and one whose deflated data was damaged in transfer
    trades = trades_of("binance", "BTCUSDT", 30, FEB, 1)
    good = write_binance_zip(tmp_path / "BTCUSDT-trades-2026-02-01.zip", trades)
    damaged = write_binance_zip(
        tmp_path / "ETHUSDT-trades-2026-02-01.zip", trades_of("binance", "ETHUSDT", 3000, FEB, 1)
    )
    damaged.write_bytes(_flipped(damaged.read_bytes(), damaged.stat().st_size // 2, 64))
    # When one pass runs
    done = one_pass(iceberg, namespace, tmp_path)
    # Then the good one is in, the damaged one is recorded as failed, in one line naming it
    assert [r.identity.path for r in done.ingested] == [str(good)]
    assert [r.identity.path for r in done.failed] == [str(damaged)]
    reason = done.failed[0].reason or ""
    assert "damaged" in reason and str(damaged) in reason and "\n" not in reason
    assert sorted(stored_trades(iceberg, namespace)) == sorted(map(stored_key, trades))


def _status(catalog: Catalog, namespace: str, where: Path) -> list[Any]:
    from ingest.landing import landing_status

    return landing_status(catalog, namespace, Landing.at(str(where)))


def test_a_pass_is_bounded_and_the_next_one_takes_the_rest_oldest_first(
    iceberg: Catalog, namespace: str, tmp_path: Path
) -> None:
    paths = []
    for i, symbol in enumerate(["AUSDT", "BUSDT", "CUSDT"]):
        path = write_binance_zip(
            tmp_path / f"{symbol}-trades-2026-02-01.zip", trades_of("binance", symbol, 5, FEB, 1)
        )
        _age(path, 100 - i)
        paths.append(str(path))
    first = one_pass(iceberg, namespace, tmp_path, max_files=2)
    assert [r.identity.path for r in first.ingested] == paths[:2] and first.left == 1
    second = one_pass(iceberg, namespace, tmp_path, max_files=2)
    assert [r.identity.path for r in second.ingested] == paths[2:] and second.left == 0


def test_a_republished_file_is_reported_changed_and_never_doubled(
    iceberg: Catalog, namespace: str, tmp_path: Path
) -> None:
    # Given a file ingested, then republished under the same name: one price corrected, one
    # trade added
    trades = trades_of("binance", "BTCUSDT", 10, FEB, 1)
    path = write_binance_zip(tmp_path / "BTCUSDT-trades-2026-02-01.zip", trades)
    one_pass(iceberg, namespace, tmp_path)
    fixed = [trades[0].__class__(**{**trades[0].__dict__, "price": trades[0].price + 1})]
    added = trades_of("binance", "BTCUSDT", 1, FEB, 1000)
    write_binance_zip(path, fixed + trades[1:] + added)
    _age(path, -5)  # a new modification time, as a new download has
    assert [s.state for s in _status(iceberg, namespace, tmp_path)] == ["changed"]
    # When the next pass runs
    done = one_pass(iceberg, namespace, tmp_path)
    # Then it is reported as changed; the new trade is added, the stored ones stay as they
    # were (the contradicting version is rejected with its reason), nothing is doubled
    assert done.changed == [str(path)]
    assert (done.accepted, done.duplicates, done.rejected) == (1, 9, 1)
    assert sorted(stored_trades(iceberg, namespace)) == sorted(map(stored_key, trades + added))
    rejects = iceberg.load_table((namespace, TRADES_REJECTED)).scan().to_arrow().to_pylist()
    assert [(r["reason"], r["source"]) for r in rejects] == [("conflicting_duplicate", str(path))]
    assert [s.state for s in _status(iceberg, namespace, tmp_path)] == ["ingested"]


def test_tardis_unknown_side_is_rejected_with_its_reason(
    iceberg: Catalog, namespace: str, tmp_path: Path
) -> None:
    trades = trades_of("deribit", "BTC-PERPETUAL", 4, FEB, 1)
    lines = tardis_lines(trades)
    lines[2] = lines[2].replace(f",{trades[1].side},", ",unknown,")
    write_tardis_gz(tmp_path / "deribit_trades_2026-02-01_BTC-PERPETUAL.csv.gz", lines)
    done = one_pass(iceberg, namespace, tmp_path)
    assert (done.accepted, done.rejected) == (3, 1)
    rejects = iceberg.load_table((namespace, TRADES_REJECTED)).scan().to_arrow().to_pylist()
    assert [(r["side"], r["reason"]) for r in rejects] == [("unknown", "invalid_side")]


def test_a_price_with_more_decimals_than_stored_rejects_that_row_only(
    iceberg: Catalog, namespace: str, tmp_path: Path
) -> None:
    trades = trades_of("binance", "BTCUSDT", 5, FEB, 1)
    odd = trades[0].__class__(**{**trades[0].__dict__, "price": Decimal("100.123456789")})
    write_binance_zip(tmp_path / "BTCUSDT-trades-2026-02-01.zip", [odd, *trades[1:]])
    done = one_pass(iceberg, namespace, tmp_path)
    assert (done.accepted, done.rejected, done.failed) == (4, 1, [])
    rejects = iceberg.load_table((namespace, TRADES_REJECTED)).scan().to_arrow().to_pylist()
    assert [(r["price"], r["reason"]) for r in rejects] == [("100.123456789", "price_precision")]


def test_tardis_uuid_ids_are_stored_as_given_and_an_empty_id_is_not_lost(
    iceberg: Catalog, namespace: str, tmp_path: Path
) -> None:
    trades = trades_of("bybit", "BTCUSDT", 4, FEB, 1)
    ids = [str(uuid.UUID(int=random.Random(i).getrandbits(128))) for i in range(3)] + [""]
    write_tardis_gz(tmp_path / "bybit_trades_2026-02-01_BTCUSDT.csv.gz", tardis_lines(trades, ids))
    done = one_pass(iceberg, namespace, tmp_path)
    # Then: all four stored, the UUIDs as given, the trade without an id under a synthetic id
    assert not done.failed and (done.accepted, done.rejected) == (4, 0)
    stored = iceberg.load_table((namespace, TRADES)).scan().to_arrow()
    texts = stored.column("trade_id_text").to_pylist()
    assert set(ids[:3]) < set(texts) and sum(t.startswith("~") for t in texts) == 1
    # And a second delivery of the same file is recognised: nothing new
    (tmp_path / "again").mkdir()
    write_tardis_gz(
        tmp_path / "again" / "bybit_trades_2026-02-01_BTCUSDT.csv.gz", tardis_lines(trades, ids)
    )
    again = one_pass(iceberg, namespace, tmp_path / "again")
    assert (again.accepted, again.duplicates) == (0, 4)


def test_cli_status_lists_pending_ingested_and_failed(tmp_path: Path) -> None:
    land = tmp_path / "land"
    land.mkdir()
    write_binance_zip(
        land / "BTCUSDT-trades-2026-02-01.zip", trades_of("binance", "BTCUSDT", 3, FEB, 1)
    )
    (land / "junk.csv").write_text("a,b\n")
    env = {"OHLCV_DATA_DIR": str(tmp_path / "data"), "OHLCV_PREFECT_PORT": "9"}
    listed = CliRunner().invoke(app, ["ingest", "--status", str(land)], env=env)
    assert listed.exit_code == 0, listed.output
    assert "2 pending, 0 changed, 0 ingested, 0 failed" in listed.output
    ran = CliRunner().invoke(app, ["ingest"], env={**env, "OHLCV_LANDING": str(land)})
    assert ran.exit_code == 0, ran.output
    assert "1 files ingested" in ran.output and "1 failed" in ran.output
    listed = CliRunner().invoke(app, ["ingest", "--status", str(land)], env=env)
    assert "0 pending, 0 changed, 1 ingested, 1 failed" in listed.output
