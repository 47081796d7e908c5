"""Exchange file formats: Binance public data, Tardis.dev, and the project's own layout.

A feed file becomes an Arrow table in the project's own layout (:data:`~ingest.reading.
REQUIRED_COLUMNS`), which :func:`ingest.ingest` then checks and appends like any other input.
Nothing goes through a float: trade ids become DECIMAL(18, 0) (or stay text where ids may be
text), prices and quantities DECIMAL(18, 8), exactly (or all three stay text when a value would
not fit, for ingestion to reject just that row), times exact microsecond timestamps.

The format is told from the content (a header or its absence, the number of columns, whether
the first row's values have the types of the format's columns) and the file name
(``BTCUSDT-aggTrades-2026-02-01.zip``); ``--format`` overrides it. Files may be plain, ``.gz``
or Binance's ``.zip`` holding one CSV. CSV is read by pyarrow's reader with the format's column
names and types, inflated by Arrow as it parses: no per-row Python.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from core.feeds import FORMATS, OWN_FORMAT
from core.tables import DECIMAL_PRECISION, DECIMAL_SCALE
from ingest.columns import use_reusing_memory_pool
from ingest.reading import (
    REQUIRED_COLUMNS,
    SchemaError,
    check_header,
    own_csv_options,
    text_columns,
)

Opener = Callable[[], BinaryIO]
"""Opens the raw bytes of a file, from its start (a new handle on each call)."""

MS_US_CUTOFF = 10**14
"""A Binance ``time`` below this is milliseconds, at or above it microseconds (Binance moved
spot files to microseconds on 2025-01-01). 10**14 ms is the year 5138; 10**14 us is 1973."""

_TEXT = pa.large_string()
AMOUNT = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
_ID = pa.decimal128(DECIMAL_PRECISION, 0)
"""Numeric trade ids as the reader parses them: the same decimal grammar as ids read from text
(:mod:`ingest.ids`), so an id that is not a plain number (``0x1F``, 19 digits) makes the whole
file read as text, where it is judged as before."""


@dataclass(frozen=True)
class Layout:
    """The columns of one exchange format and which of them hold our seven."""

    name: str
    columns: tuple[str, ...]
    header: bool
    """Whether the exchange writes a header row (Binance spot: no; futures, Tardis: yes)."""
    trade_id: str
    price: str
    quantity: str
    time: str
    buyer_maker: str | None = None
    """Binance: true when the buyer was the maker, i.e. the taker sold."""
    side: str | None = None
    exchange: str | None = None
    """The exchange of every row unless ``--exchange`` says otherwise; None: a column."""
    time_unit: str = "auto"
    """``us``, or ``auto``: milliseconds or microseconds per row by magnitude."""
    text_ids: bool = False
    """Whether trade ids may be text (Tardis: Bybit's UUIDs); else they are numbers."""

    def types(self, parsed: bool = True) -> dict[str, pa.DataType]:
        """The reader's type of each column: ids, prices and quantities parsed (``parsed``:
        exactly, refusing what does not fit) or as text."""
        types: dict[str, pa.DataType] = {
            self.trade_id: _ID if parsed and not self.text_ids else _TEXT,
            self.price: AMOUNT if parsed else _TEXT,
            self.quantity: AMOUNT if parsed else _TEXT,
            self.time: pa.int64(),
        }
        if self.side:
            types[self.side] = _TEXT
        if self.buyer_maker:
            types[self.buyer_maker] = pa.bool_()
        if self.exchange is None:
            types.update({"exchange": pa.dictionary(pa.int32(), _TEXT)})
            types.update({"symbol": pa.dictionary(pa.int32(), _TEXT)})
        return types


def _binance(name: str, columns: str, header: bool, exchange: str) -> Layout:
    """A Binance layout: the first column is the trade id, price ``price``, quantity ``qty``,
    time ``time``, and the one ending in ``maker`` is isBuyerMaker."""
    names = tuple(columns.split(","))
    maker = next(c for c in names if c.lower().replace("_", "").endswith("buyermaker"))
    return Layout(name, names, header, names[0], "price", "qty", "time", maker, None, exchange)


BINANCE_TRADES = _binance(
    "binance-trades", "id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch", False, "binance"
)
BINANCE_AGGTRADES = _binance(
    "binance-aggtrades",
    "aggId,price,qty,firstId,lastId,time,isBuyerMaker,isBestMatch",
    False,
    "binance",
)
BINANCE_FUTURES_TRADES = _binance(
    "binance-futures-trades", "id,price,qty,quote_qty,time,is_buyer_maker", True, "binance-futures"
)
TARDIS_TRADES = Layout(
    "tardis-trades",
    ("exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount"),
    header=True,
    trade_id="id",
    price="price",
    quantity="amount",
    time="timestamp",
    side="side",
    time_unit="us",
    text_ids=True,
)
LAYOUTS = {x.name: x for x in (BINANCE_TRADES, BINANCE_AGGTRADES, BINANCE_FUTURES_TRADES)}
LAYOUTS[TARDIS_TRADES.name] = TARDIS_TRADES
IDS_MAY_BE_MISSING = frozenset({TARDIS_TRADES.name})
"""Formats whose trades may come without an id (Tardis, for exchanges that give none): such a
trade gets a synthetic id (:func:`ingest.ids.synthetic_ids`) instead of being rejected."""
OWN = OWN_FORMAT
assert (OWN, *LAYOUTS) == FORMATS, "core.feeds.FORMATS names every layout here"

# Binance spot files written since 2025 sometimes carry a header in these snake_case names.
_SPOT_HEADERS = {
    ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"): BINANCE_TRADES,
    (
        "agg_trade_id",
        "price",
        "quantity",
        "first_trade_id",
        "last_trade_id",
        "transact_time",
        "is_buyer_maker",
        "is_best_match",
    ): BINANCE_AGGTRADES,
}
_SYMBOL_RE = re.compile(r"^([A-Za-z0-9]+)-(?:trades|aggTrades)-", re.IGNORECASE)
_BOOL = {"true", "false"}


@dataclass(frozen=True)
class Feed:
    """A file read into the project's layout, and the format it was read as."""

    table: pa.Table
    format: str


def read_feed(
    open_file: Opener, name: str, fmt: str | None = None, exchange: str | None = None
) -> Feed:
    """Read a trades file of any known format into the project's own columns.

    Args:
        open_file: Opens the file's raw bytes (a local file or an object store's stream).
        name: The file name (its suffixes choose the compression; Binance's name gives the
            symbol).
        fmt: One of :data:`FORMATS`, or None to detect it from the content and name.
        exchange: The exchange of every row of a Binance file (default: the format's).

    Raises:
        SchemaError: an unknown format, an unrecognised layout (naming the columns seen and
            the formats known), a damaged archive, or a value of the wrong type.
    """
    use_reusing_memory_pool()
    if fmt is not None and fmt not in FORMATS:
        raise SchemaError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    lower = name.lower()
    if lower.endswith((".parquet", ".pq")):
        if fmt not in (None, OWN):
            raise SchemaError(f"{name!r} is Parquet: only --format {OWN} reads Parquet")
        return Feed(_read_parquet(open_file, name), OWN)
    csv = _csv_opener(open_file, name)
    first = _first_line(csv, name)
    layout, has_header = _detect(first, name) if fmt is None else _chosen(fmt, first)
    if layout is None:
        return Feed(_read_own_csv(csv, name, first), OWN)
    return Feed(_read_layout(csv, name, layout, has_header, exchange), layout.name)


def symbol_of(name: str) -> str | None:
    """The symbol of a Binance file name: ``BTCUSDT-trades-2026-02-01.zip`` -> ``BTCUSDT``."""
    found = _SYMBOL_RE.match(name.rsplit("/", 1)[-1])
    return found.group(1).upper() if found else None


# --------------------------------------------------------------------------------------------
# Detection


def _fields(line: str) -> list[str]:
    return [f.strip() for f in line.strip().split(",")] if line.strip() else []


def _is_int(value: str) -> bool:
    return value.isdigit()


def _is_number(value: str) -> bool:
    return re.fullmatch(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?", value) is not None


def _fits(layout: Layout, values: list[str]) -> bool:
    """Whether one headerless row has the layout's columns, of their types."""
    if len(values) != len(layout.columns):
        return False
    row = dict(zip(layout.columns, values, strict=True))
    return (
        _is_int(row[layout.trade_id])
        and _is_number(row[layout.price])
        and _is_number(row[layout.quantity])
        and _is_int(row[layout.time])
        and (layout.buyer_maker is None or row[layout.buyer_maker].lower() in _BOOL)
    )


def _detect(first: str, name: str) -> tuple[Layout | None, bool]:
    """(layout, has header); layout None is the project's own CSV."""
    fields = _fields(first)
    names = tuple(f.lower() for f in fields)
    if set(REQUIRED_COLUMNS) <= set(fields):
        return None, True
    for layout in LAYOUTS.values():
        if layout.header and names == tuple(c.lower() for c in layout.columns):
            return layout, True
    if names in _SPOT_HEADERS:
        return _SPOT_HEADERS[names], True
    base = name.rsplit("/", 1)[-1].lower()
    fitting = [x for x in LAYOUTS.values() if _fits(x, fields)]
    if "aggtrades" in base:
        fitting = [x for x in fitting if x is BINANCE_AGGTRADES]
    if len(fitting) == 1:
        return fitting[0], False
    known = f"known formats: {', '.join(FORMATS)}; pass --format if it is one of them"
    if fields and not _is_number(fields[0]):  # a header: in the project's own layout?
        try:
            check_header(fields)
        except SchemaError as e:
            raise SchemaError(f"{e}; or, for an exchange's file, {known}") from None
    seen = ", ".join(repr(f) for f in fields[:12]) or "no columns (an empty file)"
    raise SchemaError(
        f"cannot tell the format of {name!r}: first row {seen}; known formats: "
        f"{', '.join(FORMATS)} ({OWN}: a header naming {', '.join(REQUIRED_COLUMNS)}); "
        "pass --format if it is one of them"
    )


def _chosen(fmt: str, first: str) -> tuple[Layout | None, bool]:
    if fmt == OWN:
        return None, True
    layout = LAYOUTS[fmt]
    fields = _fields(first)
    # A row that starts with a number is data: the file has no header, whatever the format says.
    return layout, not (fields and _is_int(fields[0]))


# --------------------------------------------------------------------------------------------
# Reading


def _csv_opener(open_file: Opener, name: str) -> Opener:
    """Opens the CSV text's bytes inside a ``.zip`` (one member) or ``.gz``, or the file.

    A compressed file is read once, on the first open, and kept: the first line (to detect the
    format) and the whole read decompress the same bytes. They are inflated by Arrow in C++,
    outside the GIL and beside the CSV parser's threads, and checked against their CRC-32.
    """
    lower = name.lower()
    if lower.endswith((".zip", ".gz")):
        unpack = _zip_member if lower.endswith(".zip") else _gzip_file

        @functools.cache
        def contents() -> tuple[pa.Buffer, str | None]:
            with open_file() as raw:
                return unpack(raw.read(), name)

        def decompressed() -> BinaryIO:
            data, compression = contents()
            stream = pa.BufferReader(data)
            if compression is not None:
                stream = pa.CompressedInputStream(stream, compression)
            return cast(BinaryIO, stream)

        return decompressed
    return open_file


def _gzip_file(data: bytes, name: str) -> tuple[pa.Buffer, str | None]:
    return pa.py_buffer(data), "gzip"


_LOCAL_HEADER = struct.Struct("<4s22xHH")
"""A zip member's local header (APPNOTE 4.3.7): signature, 22 bytes we do not need, the lengths
of the file name and the extra field that come before the member's data."""
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""RFC 1952: deflate, no flags, no time, unknown OS."""


def _zip_member(data: bytes, name: str) -> tuple[pa.Buffer, str | None]:
    """The one CSV member of a zip: its bytes and their compression (None: as they are).

    A deflated member is raw deflate; framed by a gzip header and a trailer holding the CRC-32
    and size from the zip's directory, it is a gzip stream whose inflating checks both.

    Raises:
        SchemaError: the zip is damaged, or holds no file or more than one.
    """

    def damaged(reason: object) -> SchemaError:
        return SchemaError(f"cannot read {name!r}: {reason}; the zip file is damaged")

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) != 1:
                listed = ", ".join(m.filename for m in members) or "nothing"
                raise SchemaError(
                    f"{name!r} holds {listed}: a trades zip must hold exactly one CSV file"
                )
            member = members[0]
            encrypted = member.flag_bits & 0x1
            if encrypted or member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                # Other methods are rare: Python's zipfile inflates them (and checks the CRC-32).
                return pa.py_buffer(archive.read(member)), None
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as e:
        raise damaged(e) from None
    at = member.header_offset
    if at + _LOCAL_HEADER.size > len(data):
        raise damaged(f"no local header for {member.filename!r}")
    signature, name_length, extra_length = _LOCAL_HEADER.unpack_from(data, at)
    start = at + _LOCAL_HEADER.size + name_length + extra_length
    end = start + member.compress_size
    if signature != b"PK\x03\x04" or end > len(data):
        raise damaged(f"bad local header or truncated data of {member.filename!r}")
    view = memoryview(data)[start:end]
    if member.compress_type == zipfile.ZIP_STORED:
        if zlib.crc32(view) != member.CRC:
            raise damaged(f"Bad CRC-32 for file {member.filename!r}")
        return pa.py_buffer(view), None
    trailer = struct.pack("<II", member.CRC, member.file_size & 0xFFFFFFFF)
    return pa.py_buffer(b"".join((_GZIP_HEADER, view, trailer))), "gzip"


def _first_line(csv: Opener, name: str) -> str:
    try:
        with csv() as f:
            raw = f.read(64 * 1024).split(b"\n", 1)[0]
    except OSError as e:
        raise SchemaError(f"cannot read {name!r}: {e}; the file is damaged") from None
    return raw.decode("utf-8-sig", errors="replace")


def _read_csv(csv: Opener, name: str, **options: object) -> pa.Table:
    try:
        with csv() as f:
            return pacsv.read_csv(f, **options)  # type: ignore[arg-type]
    except (pa.ArrowInvalid, OSError) as e:
        raise _unreadable(name, e) from None


def _unreadable(name: str, error: Exception) -> SchemaError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    # Arrow raises OSError for damaged compressed data (a bad deflate stream, CRC-32 or size).
    damaged = "the file is damaged, " if isinstance(error, OSError) else ""
    return SchemaError(f"cannot read {name!r}: {first}; {damaged}nothing was written")


def _read_own_csv(csv: Opener, name: str, header: str) -> pa.Table:
    return _read_csv(csv, name, convert_options=own_csv_options(check_header(_fields(header))))


def _read_parquet(open_file: Opener, name: str) -> pa.Table:
    try:
        with open_file() as f:
            schema = pq.read_schema(f)
        with open_file() as f:
            return pq.read_table(f, read_dictionary=text_columns(schema))
    except (pa.ArrowInvalid, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SchemaError(
            f"cannot read {name!r}: {first}; the file is damaged or not Parquet"
        ) from None


def _read_layout(
    csv: Opener, name: str, layout: Layout, has_header: bool, exchange: str | None
) -> pa.Table:
    read = pacsv.ReadOptions(column_names=list(layout.columns), skip_rows=1 if has_header else 0)

    def options(parsed: bool) -> pacsv.ConvertOptions:
        typed = layout.types(parsed)
        return pacsv.ConvertOptions(
            column_types=typed, include_columns=list(typed), strings_can_be_null=True
        )

    try:
        # Ids, prices and quantities straight to decimals, exactly (Arrow refuses a value it
        # would round): parsed once, by the reader, many times faster than text later.
        with csv() as f:
            raw = pacsv.read_csv(f, read_options=read, convert_options=options(parsed=True))
    except pa.ArrowInvalid:
        # Some value does not fit (more decimals, or not a number): as text, so ingestion
        # rejects just those rows with their reason, or names the value.
        raw = _read_csv(csv, name, read_options=read, convert_options=options(parsed=False))
    except OSError as e:
        raise _unreadable(name, e) from None
    n = raw.num_rows
    if layout.exchange is None:
        exchange_col, symbol_col = raw.column("exchange"), raw.column("symbol")
    else:
        symbol = symbol_of(name)
        if symbol is None:
            raise SchemaError(
                f"cannot tell the symbol of {name!r}: a {layout.name} file is named like "
                "BTCUSDT-trades-2026-02-01.zip; rename it"
            )
        exchange_col = _constant(exchange or layout.exchange, n)
        symbol_col = _constant(symbol, n)
    if layout.side:
        side = raw.column(layout.side)
    else:
        side = _taker_side(raw.column(layout.buyer_maker or ""))
    return pa.table(
        {
            "exchange": exchange_col,
            "symbol": symbol_col,
            "trade_id": raw.column(layout.trade_id),
            "price": raw.column(layout.price),
            "quantity": raw.column(layout.quantity),
            "side": side,
            "ts": _timestamps(raw.column(layout.time), layout.time_unit),
        }
    )


def _constant(value: str, n: int) -> pa.Array:
    """``value`` on every row, as a one-value dictionary (parsed once, not once per row)."""
    indices = pa.array(np.zeros(n, dtype=np.int32))
    return pa.DictionaryArray.from_arrays(indices, pa.array([value], _TEXT))


def _taker_side(buyer_maker: pa.ChunkedArray) -> pa.ChunkedArray:
    """The taker's side: a buyer who is the maker means the taker sold (null stays null)."""
    sides = pa.array(["buy", "sell"], _TEXT)
    return pa.chunked_array(
        [pa.DictionaryArray.from_arrays(c.cast(pa.int32()), sides) for c in buyer_maker.chunks],
        type=pa.dictionary(pa.int32(), _TEXT),
    )


def _timestamps(time: pa.ChunkedArray, unit: str) -> pa.ChunkedArray:
    """Exact UTC microsecond timestamps of epoch times in ms or us (by magnitude, per row)."""
    chunks = []
    for chunk in time.chunks:
        values = chunk
        if unit == "auto":
            raw = np.asarray(pc.fill_null(chunk, 0).to_numpy(), dtype=np.int64)
            scaled = np.where(raw < MS_US_CUTOFF, raw * 1000, raw)
            values = pa.array(scaled, type=pa.int64(), mask=np.asarray(chunk.is_null()))
        chunks.append(values.cast(pa.timestamp("us", tz="UTC")))
    return pa.chunked_array(chunks, type=pa.timestamp("us", tz="UTC"))
