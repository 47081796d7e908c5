"""Synthetic but realistic trades, for demos, tests and benchmarks (numpy, vectorized).

The layout of a generated table, in file order:

* the body: trades roughly in time order, as a feed delivers them, with small runs reversed
  (out of order), exact duplicate rows replayed a little after their original, and the bad rows
  scattered through it;
* the tail: the last ``late_rows`` rows (see :data:`LATE_ROWS_KEY`) are late arrivals, whose ts
  lie anywhere in the window.

``trade_id`` is a sequence, as an exchange assigns it: ``(seconds from 2000-01-01 to start)
* 1000 + position in (ts, arrival) order``. It is strictly increasing in (ts, arrival) order,
dense (a week of trades spans a narrow id range, as on a real exchange, which lets the candle
step use its packed ordering key), and stable across calls: windows generated separately never
collide (at most 1000 ids per second of window) and generating the same window twice yields
exact duplicates (ingesting it again is a no-op). :func:`ingest_demo_feed` instead continues a
feed already stored: its window starts after the newest stored trade and its ids after the
highest stored one.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from core.tables import DECIMAL_SCALE, TRADES
from core.time import assume_utc, to_us, utc
from ingest.amounts import decimal_from_units
from ingest.run import IngestResult, ingest

DEMO_BAD_ROWS = 10
"""Malformed rows in a full demo window (one of each kind of :data:`BAD_ROW_KINDS`)."""

DEFAULT_SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "DOGE-USD", "ADA-USD")

# Schema metadata recording what ingesting the table into a table without these trades yields
# (with ingest's default min_ts and a `now` at or after `end`).
EXPECTED_ACCEPTED_KEY = b"ohlcv.demo.expected_accepted"
EXPECTED_DUPLICATES_KEY = b"ohlcv.demo.expected_duplicates"
EXPECTED_REJECTED_KEY = b"ohlcv.demo.expected_rejected"
LATE_ROWS_KEY = b"ohlcv.demo.late_rows"

BAD_ROW_KINDS = (
    "null_symbol",
    "negative_price",
    "zero_quantity",
    "future_ts",
    "conflicting_duplicate",
    "invalid_side",
    "blank_exchange",
    "old_ts",
    "missing_trade_id",
    "missing_price",
)
"""Bad row ``i`` is of kind ``BAD_ROW_KINDS[i % len(BAD_ROW_KINDS)]``.

Each is a copy of a random trade with one fault and a fresh trade id, except the conflicting
duplicate, which reuses its original's id with another price (when the window has too few trades
to pick an original from, it becomes a negative price instead).
"""

_UNIT = 10**DECIMAL_SCALE  # units per 1.0 of price or quantity
_US_PER_MINUTE = 60_000_000
_ID_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_IDS_PER_SECOND = 1000


# Price level, tick, lot size and typical trade size of well-known pairs.
_MARKETS: dict[str, tuple[float, float, float, float]] = {
    "BTC-USD": (65_000.0, 0.01, 1e-8, 0.05),
    "ETH-USD": (3_200.0, 0.01, 1e-8, 0.8),
    "SOL-USD": (150.0, 0.01, 1e-3, 10.0),
    "XRP-USD": (0.52, 1e-4, 1e-6, 500.0),
    "DOGE-USD": (0.15, 1e-5, 0.1, 2_000.0),
    "ADA-USD": (0.45, 1e-4, 0.01, 800.0),
}


def _market(symbol: str) -> tuple[float, int, int, float]:
    """(start price, tick in units, lot in units, typical quantity) of a symbol."""
    if symbol in _MARKETS:
        price, tick, lot, size = _MARKETS[symbol]
    else:
        # crc32, unlike hash(), is stable across processes: the same name, the same market.
        u = zlib.crc32(symbol.encode()) / 2**32
        price = 10 ** (-2 + 6 * u)
        tick = 10 ** min(max(np.floor(np.log10(price)) - 4, -DECIMAL_SCALE), -2)
        lot = 10 ** min(max(np.floor(np.log10(2_000 / price)) - 3, -DECIMAL_SCALE), 0)
        size = 2_000 / price
    return price, round(float(tick) * _UNIT), round(float(lot) * _UNIT), size


def _symbol_trades(
    rng: np.random.Generator,
    symbol: str,
    start_us: int,
    end_us: int,
    trades_per_minute: float,
    daily_cycle: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ts (sorted), price units, quantity units and is_buy of one symbol's trades."""
    first_minute = start_us // _US_PER_MINUTE
    minutes = np.arange(first_minute, -(-end_us // _US_PER_MINUTE))
    # Activity: heavy-tailed per minute, a daily cycle, quiet spells and bursts.
    activity = rng.gamma(0.6, 1 / 0.6, len(minutes))
    if daily_cycle:
        hour = (minutes % 1440) / 60
        activity *= 1 + 0.5 * np.sin(2 * np.pi * (hour - 9) / 24)
    activity[rng.random(len(minutes)) < 0.03] = 0.0
    activity[rng.random(len(minutes)) < 0.01] *= 8
    counts = rng.poisson(trades_per_minute * activity)
    n = int(counts.sum())
    offsets = rng.integers(0, _US_PER_MINUTE, n)
    offsets[rng.random(n) < 0.01] = 0  # exactly on the minute boundary
    ts = np.repeat(minutes, counts) * _US_PER_MINUTE + offsets
    ts = np.sort(ts[(ts >= start_us) & (ts < end_us)])
    n = len(ts)
    # A sweep of the book fills several orders in the same microsecond.
    tie = rng.random(n) < 0.03
    if n:
        tie[0] = False
    ts = ts[np.maximum.accumulate(np.where(tie, 0, np.arange(n)))]

    price0, tick, lot, size = _market(symbol)
    per_trade_vol = 0.04 / np.sqrt(max(trades_per_minute, 1e-9) * 1440)
    steps = rng.normal(0.0, per_trade_vol, n)
    steps[rng.random(n) < 1e-4] *= 25  # rare jumps
    price = price0 * np.exp(np.cumsum(steps))
    # Whole ticks and lots in integer units: exact decimals, never above DECIMAL(18, 8).
    ticks = np.clip(np.rint(price * _UNIT / tick), 1, 10**17 // tick).astype(np.int64)
    lots = np.rint(rng.lognormal(np.log(size), 1.0, n) * _UNIT / lot)
    quantity_units = np.clip(lots, 1, 10**16 // lot).astype(np.int64) * lot
    price_units = ticks * tick
    is_buy = (steps > 0) ^ (rng.random(n) < 0.2)
    return ts, price_units, quantity_units, is_buy


def demo_trades(
    *,
    start: datetime,
    end: datetime,
    symbols: Sequence[str] = DEFAULT_SYMBOLS,
    exchange: str = "demo",
    trades_per_minute: float = 20,
    seed: int = 7,
    late_fraction: float = 0.01,
    duplicate_fraction: float = 0.005,
    bad_rows: int = DEMO_BAD_ROWS,
    first_trade_id: int | None = None,
    daily_cycle: bool = True,
) -> pa.Table:
    """Generate trades for ``symbols`` with ts in ``[start, end)`` (aware datetimes).

    Prices follow a geometric random walk rounded to each symbol's tick; quantities are
    lognormal, rounded to a lot size; arrivals are Poisson with bursts, a daily cycle and empty
    minutes; some trades share a microsecond or sit exactly on a minute boundary. See the module
    docstring for the row layout and trade ids, and :data:`BAD_ROW_KINDS` for the bad rows.

    Columns: exchange, symbol (string), trade_id (int64), price and quantity
    (decimal128(18, 8)), side (``buy``/``sell``), ts (timestamp[us, UTC]). The schema metadata
    holds the expected ingest counts (``EXPECTED_*_KEY``) and the number of late rows at the
    end (``LATE_ROWS_KEY``). Ingested into a table without these trades, with ``now >= end``:
    rejected = bad rows + one per conflicting duplicate (its original is rejected too, since
    neither version can be trusted), duplicates = ``duplicate_fraction`` of the trades.

    Args:
        start: First instant of the window.
        end: End of the window (exclusive).
        symbols: Pairs to trade; known ones get realistic prices, others a stable made-up level.
        exchange: Exchange name for every row.
        trades_per_minute: Average trades per minute and symbol.
        seed: Seed of the random generator: same arguments, same table.
        late_fraction: Share of trades moved to the tail as late arrivals.
        duplicate_fraction: Share of trades delivered twice.
        bad_rows: Number of malformed rows.
        first_trade_id: Id of the first trade, to continue a feed already in a table (see
            :func:`feed_position`); by default derived from ``start`` as described above.
        daily_cycle: Whether activity follows the time of day (busiest around 15:00 UTC, three
            times the quietest hour); without it the rate is the same at every hour, as a
            benchmark comparing hours needs.

    Raises:
        ValueError: a naive start or end, an empty or inverted window, a window before 2000, or
            bad fractions.
    """
    start_us, end_us = to_us(start), to_us(end)
    if end_us <= start_us:
        raise ValueError(f"end {end} is not after start {start}: pass a non-empty window")
    if start_us < to_us(_ID_EPOCH):
        raise ValueError(f"start {start} is before 2000-01-01: trade ids count from there")
    if not symbols or len(set(symbols)) != len(symbols):
        raise ValueError(f"symbols must be non-empty and distinct, got {list(symbols)!r}")
    for name, fraction in (("late", late_fraction), ("duplicate", duplicate_fraction)):
        if not 0 <= fraction < 1:
            raise ValueError(f"{name}_fraction={fraction} is outside [0, 1)")
    if bad_rows < 0:
        raise ValueError(f"bad_rows={bad_rows} is negative")
    rng = np.random.default_rng(seed)

    parts = [
        _symbol_trades(rng, symbol, start_us, end_us, trades_per_minute, daily_cycle)
        for symbol in symbols
    ]
    ts = np.concatenate([p[0] for p in parts])
    order = np.argsort(ts, kind="stable")  # merges the per-symbol sorted runs
    ts = ts[order]
    sym = np.repeat(np.arange(len(symbols), dtype=np.int32), [len(p[0]) for p in parts])[order]
    price = np.concatenate([p[1] for p in parts])[order]
    quantity = np.concatenate([p[2] for p in parts])[order]
    is_buy = np.concatenate([p[3] for p in parts])[order]
    n = len(ts)

    capacity = (end_us - start_us) // 1_000_000 * _IDS_PER_SECOND
    if first_trade_id is None and n + bad_rows > capacity:
        raise ValueError(
            f"{n + bad_rows} trades do not fit the {capacity} trade ids of a "
            f"{(end_us - start_us) / 1e6:.0f} s window ({_IDS_PER_SECOND} per second): "
            "lower trades_per_minute, widen the window or pass first_trade_id"
        )
    if first_trade_id is None:
        first_id = (start_us - to_us(_ID_EPOCH)) // 1_000_000 * _IDS_PER_SECOND
    else:
        first_id = first_trade_id
    trade_id = first_id + np.arange(n, dtype=np.int64)

    # Choose the special rows among distinct trades so the expected counts are exact.
    n_late = round(late_fraction * n)
    n_dup = round(duplicate_fraction * n)
    kinds = [BAD_ROW_KINDS[i % len(BAD_ROW_KINDS)] for i in range(bad_rows)]
    n_conflicts = min(kinds.count("conflicting_duplicate"), max(n - n_late - n_dup, 0))
    special = rng.choice(n, n_late + n_dup + n_conflicts, replace=False)
    late = np.sort(special[:n_late])
    dup_sources = special[n_late : n_late + n_dup]
    victims = special[n_late + n_dup :]

    on_time = np.ones(n, dtype=bool)
    on_time[late] = False
    body = np.flatnonzero(on_time)
    # Runs of 8 arriving in reverse order.
    blocks = len(body) // 8
    runs = body[: blocks * 8].reshape(blocks, 8)
    flipped = rng.random(blocks) < 0.02
    runs[flipped] = runs[flipped, ::-1]  # a view: reverses those runs inside body

    # Bad rows are extra rows (indices >= n) appended to every column.
    template = rng.integers(0, n, bad_rows) if n else np.zeros(bad_rows, np.int64)
    bad_index = n + np.arange(bad_rows)
    conflict_slots = [i for i, kind in enumerate(kinds) if kind == "conflicting_duplicate"]
    for slot in conflict_slots[len(victims) :]:
        kinds[slot] = "negative_price"  # too few trades to conflict with
    conflict_slots = conflict_slots[: len(victims)]
    template[conflict_slots] = victims
    other_slots = [i for i in range(bad_rows) if i not in set(conflict_slots)]

    # Replays land a little after the original; other bad rows anywhere in the body.
    position = np.empty(n, dtype=np.int64)
    position[body] = np.arange(len(body))
    replayed = np.concatenate([dup_sources, victims])
    replay_at = np.minimum(position[replayed] + rng.integers(1, 200, len(replayed)), len(body))
    inserted = np.concatenate([dup_sources, bad_index[conflict_slots], bad_index[other_slots]])
    inserted_at = np.concatenate([replay_at, rng.integers(0, len(body) + 1, len(other_slots))])
    file_order = np.concatenate([np.insert(body, inserted_at, inserted), late])

    columns = _bad_rows_appended(
        kinds,
        template,
        symbols,
        sym,
        trade_id,
        first_id + n,
        price,
        quantity,
        is_buy,
        ts,
        end_us,
        rng,
    )
    table = _to_arrow(columns, file_order, exchange, symbols)
    n_victims = len(victims)
    metadata = {
        EXPECTED_ACCEPTED_KEY: str(n - n_victims).encode(),
        EXPECTED_DUPLICATES_KEY: str(n_dup).encode(),
        EXPECTED_REJECTED_KEY: str(bad_rows + n_victims).encode(),
        LATE_ROWS_KEY: str(n_late).encode(),
    }
    return table.replace_schema_metadata(metadata)


def feed_position(table: Table) -> tuple[datetime, int] | None:
    """Newest ts and highest trade_id already in a trades table (None while it is empty).

    Read from the data files' column statistics, so it costs a metadata scan, not a data scan.
    """
    if table.current_snapshot() is None:
        return None
    files = table.inspect.files()
    if files.num_rows == 0:
        return None
    metrics = files.column("readable_metrics").combine_chunks()
    ts_max = pc.max(metrics.field("ts").field("upper_bound")).as_py()
    id_max = pc.max(metrics.field("trade_id").field("upper_bound")).as_py()
    if ts_max is None or id_max is None:
        return None
    # The column is timestamptz: a bound read back without a zone is still a UTC instant.
    return assume_utc(ts_max), int(id_max)


def _bad_rows_appended(
    kinds: list[str],
    template: np.ndarray,
    symbols: Sequence[str],
    sym: np.ndarray,
    trade_id: np.ndarray,
    next_id: int,
    price: np.ndarray,
    quantity: np.ndarray,
    is_buy: np.ndarray,
    ts: np.ndarray,
    end_us: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Every column with the bad rows appended; ``*_valid`` masks mark nulls, side 2 = 'hold'."""
    n, k = len(ts), len(kinds)
    if n:
        b_sym, b_ts = sym[template], ts[template]
        b_price, b_qty = price[template], quantity[template]
        b_side = is_buy[template].astype(np.int8)
    else:
        b_sym = rng.integers(0, len(symbols), k).astype(np.int32)
        b_ts = np.full(k, end_us - 1, dtype=np.int64)
        b_price = np.full(k, _UNIT, dtype=np.int64)
        b_qty = np.full(k, _UNIT, dtype=np.int64)
        b_side = np.ones(k, dtype=np.int8)
    b_id = next_id + np.arange(k, dtype=np.int64)
    b_blank_exchange = np.zeros(k, dtype=bool)
    valid = {name: np.ones(k, dtype=bool) for name in ("symbol", "trade_id", "price")}
    for i, kind in enumerate(kinds):
        match kind:
            case "null_symbol":
                valid["symbol"][i] = False
            case "negative_price":
                b_price[i] = -b_price[i]
            case "zero_quantity":
                b_qty[i] = 0
            case "future_ts":
                b_ts[i] = end_us + 36_500 * 86_400 * 1_000_000
            case "conflicting_duplicate":
                b_id[i] = trade_id[template[i]]
                b_price[i] += max(b_price[i] // 1000, 1)
            case "invalid_side":
                b_side[i] = 2
            case "blank_exchange":
                b_blank_exchange[i] = True
            case "old_ts":
                b_ts[i] = to_us(datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC))
            case "missing_trade_id":
                valid["trade_id"][i] = False
            case "missing_price":
                valid["price"][i] = False
    ones = np.ones(n, dtype=bool)
    return {
        "sym": np.concatenate([sym, b_sym]),
        "symbol_valid": np.concatenate([ones, valid["symbol"]]),
        "blank_exchange": np.concatenate([~ones, b_blank_exchange]),
        "trade_id": np.concatenate([trade_id, b_id]),
        "trade_id_valid": np.concatenate([ones, valid["trade_id"]]),
        "price": np.concatenate([price, b_price]),
        "price_valid": np.concatenate([ones, valid["price"]]),
        "quantity": np.concatenate([quantity, b_qty]),
        "side": np.concatenate([is_buy.astype(np.int8), b_side]),
        "ts": np.concatenate([ts, b_ts]),
    }


def _to_arrow(
    columns: dict[str, np.ndarray], order: np.ndarray, exchange: str, symbols: Sequence[str]
) -> pa.Table:
    def nulls(name: str) -> np.ndarray | None:
        missing = ~columns[name][order]
        return missing if missing.any() else None

    def text(codes: np.ndarray, values: list[str], null: np.ndarray | None = None) -> pa.Array:
        return pa.DictionaryArray.from_arrays(
            pa.array(codes, mask=null), pa.array(values, pa.string())
        ).cast(pa.string())

    ts = pa.array(columns["ts"][order], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "exchange": text(columns["blank_exchange"][order].astype(np.int8), [exchange, "  "]),
            "symbol": text(columns["sym"][order], list(symbols), nulls("symbol_valid")),
            "trade_id": pa.array(
                columns["trade_id"][order], pa.int64(), mask=nulls("trade_id_valid")
            ),
            "price": decimal_from_units(columns["price"][order], nulls=nulls("price_valid")),
            "quantity": decimal_from_units(columns["quantity"][order]),
            "side": text(columns["side"][order], ["sell", "buy", "hold"]),
            "ts": ts,
        }
    )


def write_demo_file(path: Path, table: pa.Table) -> Path:
    """Write ``table`` as a zstd Parquet file (parent directories are created) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return path


def demo_symbols(count: int) -> list[str]:
    """``count`` symbol names: :data:`DEFAULT_SYMBOLS` first, then ``SYM00-USD``, ``SYM01-USD``…"""
    extra = max(0, count - len(DEFAULT_SYMBOLS))
    return list(DEFAULT_SYMBOLS)[:count] + [f"SYM{i:02d}-USD" for i in range(extra)]


def ingest_demo_feed(
    catalog: Catalog,
    namespace: str,
    *,
    end: datetime,
    hours: float,
    symbols: int,
    trades_per_minute: float,
    seed: int,
) -> IngestResult | None:
    """Generate demo trades up to ``end`` and ingest them (source ``demo-data``, ``now=end``).

    The window is the ``hours`` before ``end``, but never reaches back to trades the table
    already holds: it starts just after the newest stored ts and trade ids continue after the
    highest stored one (see :func:`feed_position`), so repeated calls extend one feed.

    Args:
        catalog: PyIceberg catalog whose tables exist (made by ``ensure_tables``).
        namespace: Namespace of ``trades`` and ``trades_rejected``.
        end: End of the window (exclusive), an aware datetime.
        hours: Length of the window when the table holds no later trades.
        symbols: How many symbols to trade (see :func:`demo_symbols`).
        trades_per_minute: Average trades per minute and symbol.
        seed: Seed of the random generator.

    Returns:
        What the ingest did, or None when the table already holds trades up to ``end``.

    Raises:
        ValueError: ``end`` is naive.
    """
    end = utc(end)
    start = end - timedelta(hours=hours)
    first_id = None
    position = feed_position(catalog.load_table((namespace, TRADES)))
    if position is not None:
        newest, highest_id = position
        start = max(start, newest + timedelta(microseconds=1))
        first_id = highest_id + 1
    if start >= end:
        return None
    # Malformed rows in proportion to the window: a rerun minutes later continues the feed
    # without a fresh batch of rejects.
    share = (end - start) / timedelta(hours=hours)
    table = demo_trades(
        start=start,
        end=end,
        symbols=demo_symbols(symbols),
        trades_per_minute=trades_per_minute,
        seed=seed,
        first_trade_id=first_id,
        bad_rows=round(DEMO_BAD_ROWS * share),
    )
    return ingest(catalog, namespace, table, source="demo-data", now=end)
