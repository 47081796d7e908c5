"""Pure candle logic: DataFrame -> DataFrame, identical on Spark Connect and classic sessions.

Open and close are the prices of the first and last trade ordered by (ts, trade id). They come
from ``min_by``/``max_by`` over an ordering key, never ``orderBy`` + ``first``/``last`` (Spark does
not keep a sort order through an aggregation, SPARK-53060). A trade id is a number
(``trade_id``) or text (``trade_id_text``), exactly one of them set: at one ts, numeric ids come
first, in numeric order, then text ids in the order of their UTF-8 bytes (code points). The key
is a struct (ts, id is text, trade_id, trade_id_text), which is always exact but forces a
sort-based aggregation, or, when the caller proves that every id is a number within a range
that fits, a packed 64-bit integer that orders the same way and lets Spark hash-aggregate
(about 2x faster on 10 M trades here).

Volume and quote volume are exact sums. Spark sums DECIMAL(28, 8) and DECIMAL(38, 16) on
``java.math.BigDecimal``, so by default they are summed as 64-bit integers instead: each price
and quantity becomes its exact count of 1e-8 units (below 10^18, so 60 bits), and the units and
the 120-bit product are cut into 31-bit limbs. A window's sum of such limbs stays below 2^63 for
fewer than ``INTEGER_SUMS_MAX_TRADES`` (2^28) trades, so no sum can overflow (wrap or round)
within that bound; per window, the carries are propagated in 64-bit integers and the result
becomes a decimal through four exact products. Where that bound cannot be proven (a caller says
there may be 2^28 trades or more, or prices and quantities are not DECIMAL(18, 8)-compatible),
the sums run on decimals as Spark does them: equally exact. A window that would hold 2^28
trades or more on the integer path, or a quote volume above 2.6e20 in one candle, fails the
query rather than produce a number nobody proved.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DecimalType

from core.calendars import DAY_US, Calendar, Calendars, is_daily
from core.tables import DECIMAL_PRECISION, DECIMAL_SCALE, PRICE, QUOTE_VOLUME, VOLUME
from core.timeframes import TIMEFRAMES, Timeframe
from spark_jobs.ordering import TEXT_ID, TradeIdRange, fits_packed_key, ordering_key

PRICE_SQL = str(PRICE)
VOLUME_SQL = str(VOLUME)
QUOTE_VOLUME_SQL = str(QUOTE_VOLUME)

CANDLE_COLUMNS = (
    "exchange",
    "symbol",
    "window_start",
    "window_end",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trade_count",
    "vwap",
    "open_ts",
    "close_ts",
    "trading_date",
    "synthetic",
)


ONE_MINUTE = TIMEFRAMES["1m"]

INTEGER_SUMS_MAX_TRADES = 2**28
"""The integer sums are proven exact for windows of fewer trades than this (see the module)."""

_SCALE = DECIMAL_SCALE  # decimal places of price and quantity
_PRICE_TYPE = f"decimal({DECIMAL_PRECISION},{_SCALE})"
_LIMB_BITS = 31
_LIMB_MASK = (1 << _LIMB_BITS) - 1


def window_start_us(ts: Column, tf: Timeframe) -> Column:
    """Microseconds since the epoch of the start of the UTC-aligned window holding ``ts``."""
    micros = F.unix_micros(ts)
    return micros - F.pmod(micros, F.lit(tf.width_us))


def windows(
    ts: Column, tf: Timeframe, calendars: Calendars | None = None
) -> tuple[Column, Column, Column]:
    """The window holding ``ts``, per instrument calendar: its start and end (epoch
    microseconds) and its local trading date; all null where ``ts`` is outside its calendar's
    session.

    Needs ``exchange`` and ``symbol`` columns when a calendar other than UTC is declared.
    Only unix micros, ``from_utc_timestamp``/``to_utc_timestamp`` with literal zones and
    ``date_from_unix_date`` are used: none of them reads the session time zone, so the result
    does not depend on ``spark.sql.session.timeZone`` (nor on the machine's).
    """
    if calendars is None or calendars.all_utc:
        start, end, day = _window(ts, tf, Calendar())
    else:
        cases = [
            ((F.col("exchange") == F.lit(e)) & (F.col("symbol") == F.lit(s)), c)
            for (e, s), c in calendars.symbols.items()
        ]
        cases += [(F.col("exchange") == F.lit(e), c) for e, c in calendars.exchanges.items()]
        parts = [_window(ts, tf, c) for _, c in cases]
        fallback = _window(ts, tf, calendars.default)
        start, end, day = (
            _case([(cond, p[i]) for (cond, _), p in zip(cases, parts, strict=True)], fallback[i])
            for i in range(3)
        )
    return start, end, day


def _case(branches: list[tuple[Column, Column]], otherwise: Column) -> Column:
    if not branches:
        return otherwise
    expr = F.when(branches[0][0], branches[0][1])
    for cond, value in branches[1:]:
        expr = expr.when(cond, value)
    return expr.otherwise(otherwise)


def _days(local_us: Column) -> Column:
    """Whole days since the epoch of a local-time microsecond count (exact integer division)."""
    return ((local_us - F.pmod(local_us, F.lit(DAY_US))) / F.lit(DAY_US)).cast("int")


def _window(ts: Column, tf: Timeframe, calendar: Calendar) -> tuple[Column, Column, Column]:
    """(start us, end us, trading date) of the window of ``calendar`` holding ``ts``."""
    micros = F.unix_micros(ts)
    width = F.lit(tf.width_us)
    if calendar.is_utc:
        start = micros - F.pmod(micros, width)
        return start, start + width, F.date_from_unix_date(_days(start))
    # The zone's offset at ts: from_utc_timestamp shifts the instant's microseconds by it.
    local = F.unix_micros(F.from_utc_timestamp(ts, calendar.zone))
    if not is_daily(tf):
        # The local wall clock's grid; the zone's offsets are congruent modulo the width
        # (checked when the calendar is declared), so windows never overlap at a switch.
        into = F.pmod(local, width)
        start = micros - into
        return start, start + width, F.date_from_unix_date(_days(local - into))
    day = _days(local)

    def instant(local_us: Column) -> Column:
        # The instant the local clock shows local_us: to_utc_timestamp resolves the zone's
        # rules at that wall time (a 23- or 25-hour day comes out of it, not of arithmetic).
        return F.unix_micros(F.to_utc_timestamp(F.timestamp_micros(local_us), calendar.zone))

    midnight = day.cast("long") * F.lit(DAY_US)
    session = calendar.session
    if session is None:
        return instant(midnight), instant(midnight + F.lit(DAY_US)), F.date_from_unix_date(day)
    tod = local - midnight
    weekday = F.pmod(day + F.lit(3), F.lit(7))  # 1970-01-01 was a Thursday; Monday = 0
    inside = (
        (tod >= F.lit(session.open_us))
        & (tod < F.lit(session.close_us))
        & weekday.isin(sorted(session.weekdays))
    )
    return (
        F.when(inside, instant(midnight + F.lit(session.open_us))),
        F.when(inside, instant(midnight + F.lit(session.close_us))),
        F.when(inside, F.date_from_unix_date(day)),
    )


def vwap(quote_volume: Column, volume: Column) -> Column:
    """DECIMAL(38,16) / DECIMAL(28,8) is typed DECIMAL(38,8): cast half-up to the price scale."""
    return (quote_volume / volume).cast(PRICE_SQL)


def _units(amount: Column) -> Column:
    """An exact DECIMAL(18, 8) value as its int64 count of 1e-8 units (|units| < 10^18).

    The integer part comes from a truncating cast and the fraction from a subtraction of two
    same-scale decimals, both on Spark's 64-bit decimal representation. The fraction is k/10^8
    with |k| < 10^8: as a double it is within 2^-53 of that, so (fraction * 10^8) lies within
    10^-7 of the integer k and rounding it gives k exactly.
    """
    amount = amount.cast(_PRICE_TYPE)
    whole = amount.cast("long")
    fraction = (amount - whole.cast(_PRICE_TYPE)).cast("double")
    return whole * F.lit(10**_SCALE) + F.rint(fraction * F.lit(float(10**_SCALE))).cast("long")


def _split(value: Column) -> tuple[Column, Column]:
    """(high, low) with value = high * 2^31 + low and 0 <= low < 2^31 (floor semantics)."""
    return F.shiftright(value, _LIMB_BITS), value.bitwiseAND(F.lit(_LIMB_MASK))


def _integer_sum_limbs(price_units: Column, quantity_units: Column) -> dict[str, Column]:
    """Per-trade limbs whose per-window sums give volume and quote volume exactly.

    With |units| < 2^60, quantity = v1 * 2^31 + v0 and price * quantity =
    q3 * 2^93 + q2 * 2^62 + q1 * 2^31 + q0, every limb below 2^32 in magnitude: summed over
    fewer than 2^28 trades, none can leave the 64-bit range.
    """
    p_hi, p_lo = _split(price_units)
    q_hi, q_lo = _split(quantity_units)
    low = p_lo * q_lo  # < 2^62
    middle = p_lo * q_hi + p_hi * q_lo  # |.| < 2^61
    high = p_hi * q_hi  # |.| < 2^58
    low_hi, low_lo = _split(low)
    middle_hi, middle_lo = _split(middle)
    high_hi, high_lo = _split(high)
    return {
        "_v0": q_lo,
        "_v1": q_hi,
        "_q0": low_lo,
        "_q1": low_hi + middle_lo,
        "_q2": middle_hi + high_lo,
        "_q3": high_hi,
    }


def _decimal_times(
    value: Column, factor: Decimal, digits: int, scale: int, value_digits: int = 19
) -> Column:
    """``value`` (a long of at most ``value_digits`` digits) times an exact decimal ``factor``
    of ``scale`` places, typed DECIMAL(digits, scale).

    Spark types DECIMAL(p1, 0) * DECIMAL(p2, s) as DECIMAL(p1 + p2 + 1, s), exact while that is
    at most 38 digits (asserted here); the caller's bounds make the cast to ``digits`` exact.
    """
    whole = len(str(abs(int(factor)))) if abs(factor) >= 1 else 0
    assert value_digits + whole + scale + 1 <= 38, "Spark would round this product"
    factor_type = f"decimal({whole + scale},{scale})"
    product = value.cast(f"decimal({value_digits},0)") * F.lit(format(factor, "f")).cast(
        factor_type
    )
    return product.cast(f"decimal({digits},{scale})")


def _integer_sums(volume_limbs: list[str], quote_limbs: list[str]) -> dict[str, Column]:
    """Volume and quote volume of a window from its limb sums, exactly (see the module).

    The carries between limbs are propagated in 64-bit integers (each limb sum is below 2^63
    for windows of fewer than ``INTEGER_SUMS_MAX_TRADES`` trades), which leaves
    volume units = v1 * 2^31 + v0 and quote units = hi * 2^62 + lo with 0 <= v0 < 2^31,
    0 <= lo < 2^62; only those two pairs become decimals, in four exact multiplications by
    constants. A window whose quote volume would need ``hi`` of 10^18 or more (a quote volume
    above 2.6 * 10^20 in one candle) fails the query.
    """
    mask = F.lit(_LIMB_MASK)
    v0, v1 = (F.col(c) for c in volume_limbs)
    q0, q1, q2, q3 = (F.col(c) for c in quote_limbs)
    c1 = q1 + F.shiftright(q0, _LIMB_BITS)
    c2 = q2 + F.shiftright(c1, _LIMB_BITS)
    top = q3 + F.shiftright(c2, _LIMB_BITS)  # quote units = top * 2^93 + (c2 & M) * 2^62 + ...
    hi = F.shiftleft(top, _LIMB_BITS) + c2.bitwiseAND(mask)
    lo = F.shiftleft(c1.bitwiseAND(mask), _LIMB_BITS) + q0.bitwiseAND(mask)
    unit = Decimal(1).scaleb(-2 * _SCALE)
    quote = _decimal_times(hi, Decimal(2**62) * unit, 37, 2 * _SCALE, value_digits=18)
    quote = quote + _decimal_times(lo, unit, 19, 2 * _SCALE)
    too_large = (top >= F.lit(1 << 32)) | (top <= F.lit(-(1 << 32)))
    too_large = too_large | (hi >= F.lit(10**18)) | (hi <= F.lit(-(10**18)))
    refused = F.raise_error(
        F.lit("a quote volume above 2.6e20 in one candle: beyond the exact integer sums")
    )
    volume_high = v1 + F.shiftright(v0, _LIMB_BITS)  # < 2^60
    volume = _decimal_times(volume_high, Decimal(2**31) * Decimal(1).scaleb(-_SCALE), 30, _SCALE)
    volume = volume + _decimal_times(v0.bitwiseAND(mask), Decimal(1).scaleb(-_SCALE), 11, _SCALE)
    return {"volume": volume, "quote_volume": F.when(too_large, refused).otherwise(quote)}


def _integer_sums_allowed(trades: DataFrame, max_trades: int | None) -> bool:
    """True when the integer sums are exact for ``trades``: amounts that cast exactly to
    DECIMAL(18, 8), and no promise of 2^28 trades or more."""
    if max_trades is not None and max_trades >= INTEGER_SUMS_MAX_TRADES:
        return False
    for name in ("price", "quantity"):
        t = trades.schema[name].dataType
        if not isinstance(t, DecimalType) or t.scale > _SCALE or t.precision - t.scale > 10:
            return False
    return True


@dataclass(frozen=True)
class CandleState:
    """Candles before their last step: per (exchange, symbol, window) the open, high, low,
    close, the sums' inputs summed (integer limbs, or decimals), the trade count and the first
    and last trade's time, in ``_w_start``/``_w_end`` (epoch us) and ``_w_date``.

    Mergeable: the state of a longer window is the merge of its shorter windows' states
    (:func:`roll_up`), exactly; :func:`finish` turns a state into candles.
    """

    frame: DataFrame
    integer_sums: bool

    @property
    def sum_columns(self) -> list[str]:
        return list(_LIMBS if self.integer_sums else _DECIMAL_SUMS)


_LIMBS = ("_v0", "_v1", "_q0", "_q1", "_q2", "_q3")
_DECIMAL_SUMS = ("_quantity", "_quote")
STATE_KEY = ("exchange", "symbol", "_w_start", "_w_end", "_w_date")


def candles(
    trades: DataFrame,
    tf: Timeframe,
    trade_ids: TradeIdRange | None = None,
    calendars: Calendars | None = None,
    max_trades: int | None = None,
) -> DataFrame:
    """Aggregate trades into one candle per (exchange, symbol, window).

    Args:
        trades: rows with exchange, symbol, trade_id, price, quantity, ts, and
            ``trade_id_text`` when some ids may be text.
        tf: the timeframe.
        trade_ids: the exact trade_id range of ``trades``, if known and no id is text. It only
            selects the faster packed ordering key; results are identical with or without it.
        calendars: each instrument's calendar (default: UTC for all). Windows are
            [start, end) of the instrument's local clock (see :mod:`core.calendars`); trades
            outside a session are in no daily candle.
        max_trades: an upper bound on the number of ``trades`` (their count), if known. At
            ``INTEGER_SUMS_MAX_TRADES`` or more the sums run on decimals; below it, or when
            unknown, on 64-bit integer limbs (see the module). Results are identical.

    Returns:
        The columns of ``CANDLE_COLUMNS`` (without ``computed_at``), typed as the candle tables;
        ``synthetic`` is false (every candle here has trades).
    """
    return finish(candle_state(trades, tf, trade_ids, calendars, max_trades))


def candle_state(
    trades: DataFrame,
    tf: Timeframe,
    trade_ids: TradeIdRange | None = None,
    calendars: Calendars | None = None,
    max_trades: int | None = None,
) -> CandleState:
    """:func:`candles` up to the aggregation: the mergeable state (same arguments).

    When the trade ids fit the packed ordering key of a minute but not of ``tf`` (a daily
    window's microseconds leave 25 bits for ids; 10 M trades of a week span 29), the trades
    are aggregated per minute and the minutes rolled up (:func:`roll_up`): hash aggregations
    instead of sorting every trade for the struct key (a warm 1d backfill of 10.37 M trades:
    its query 7.6 s -> 5.2 s).
    """
    if fits_packed_key(ONE_MINUTE, trade_ids) and not fits_packed_key(tf, trade_ids):
        minutes = _aggregated(trades, ONE_MINUTE, trade_ids, calendars, max_trades)
        return roll_up(minutes, tf, calendars)
    return _aggregated(trades, tf, trade_ids, calendars, max_trades)


def _aggregated(
    trades: DataFrame,
    tf: Timeframe,
    trade_ids: TradeIdRange | None,
    calendars: Calendars | None,
    max_trades: int | None,
) -> CandleState:
    start, end, day = windows(F.col("ts"), tf, calendars)
    ids = ["trade_id", TEXT_ID] if TEXT_ID in trades.columns else ["trade_id"]
    located = trades.select(
        "exchange",
        "symbol",
        *ids,
        "price",
        "quantity",
        "ts",
        start.alias("_w_start"),
        end.alias("_w_end"),
        day.alias("_w_date"),
    )
    if calendars is not None and not calendars.all_utc:
        located = located.where(F.col("_w_start").isNotNull())
    integer_sums = _integer_sums_allowed(trades, max_trades)
    sum_inputs: dict[str, Column] = (
        _integer_sum_limbs(_units(F.col("price")), _units(F.col("quantity")))
        if integer_sums
        else {"_quantity": F.col("quantity"), "_quote": F.col("price") * F.col("quantity")}
    )
    # The key and the sums' inputs are computed once per row in a projection, not once per
    # aggregate function.
    keyed = located.select(
        "exchange",
        "symbol",
        "price",
        "ts",
        "_w_start",
        "_w_end",
        "_w_date",
        ordering_key(tf, F.col("_w_start"), trade_ids, ids).alias("_key"),
        *[column.alias(name) for name, column in sum_inputs.items()],
    )
    # End and date depend on the start (and the instrument): grouping by them only carries them.
    aggregated = keyed.groupBy(*STATE_KEY).agg(
        F.min_by("price", "_key").alias("open"),
        F.max("price").alias("high"),
        F.min("price").alias("low"),
        F.max_by("price", "_key").alias("close"),
        *[F.sum(name).alias(name) for name in sum_inputs],
        F.count(F.lit(1)).alias("trade_count"),
        F.min("ts").alias("open_ts"),
        F.max("ts").alias("close_ts"),
    )
    return CandleState(aggregated, integer_sums)


def roll_up(state: CandleState, tf: Timeframe, calendars: Calendars | None = None) -> CandleState:
    """The state of ``tf`` candles merged from 1m candle state (per instrument calendar; a 1m
    window outside every session of a daily timeframe is in no candle)."""
    start, end, day = windows(F.timestamp_micros(F.col("_w_start")), tf, calendars)
    located = state.frame.select(
        "exchange",
        "symbol",
        F.col("_w_start").alias("_minute"),
        start.alias("_w_start"),
        end.alias("_w_end"),
        day.alias("_w_date"),
        "open",
        "high",
        "low",
        "close",
        "trade_count",
        "open_ts",
        "close_ts",
        *state.sum_columns,
    )
    if calendars is not None and not calendars.all_utc:
        located = located.where(F.col("_w_start").isNotNull())
    merged = located.groupBy(*STATE_KEY).agg(
        F.min_by("open", "_minute").alias("open"),
        F.max("high").alias("high"),
        F.min("low").alias("low"),
        F.max_by("close", "_minute").alias("close"),
        *[F.sum(c).alias(c) for c in state.sum_columns],
        F.sum("trade_count").alias("trade_count"),
        F.min("open_ts").alias("open_ts"),
        F.max("close_ts").alias("close_ts"),
    )
    return CandleState(merged, state.integer_sums)


def finish(state: CandleState) -> DataFrame:
    """Candles (``CANDLE_COLUMNS`` without ``computed_at``) from their state: the exact sums
    from the summed limbs (or decimals), and the vwap."""
    if state.integer_sums:
        too_many = F.col("trade_count") >= F.lit(INTEGER_SUMS_MAX_TRADES)
        refused = F.raise_error(
            F.lit(
                f"a window holds {INTEGER_SUMS_MAX_TRADES} trades or more: its integer sums "
                "are not proven exact; pass max_trades to sum on decimals"
            )
        )
        exact = _integer_sums(["_v0", "_v1"], ["_q0", "_q1", "_q2", "_q3"])
        volume = F.when(too_many, refused).otherwise(exact["volume"])
        quote_volume = F.when(too_many, refused).otherwise(exact["quote_volume"])
    else:
        volume, quote_volume = F.col("_quantity"), F.col("_quote")
    sums = state.frame.withColumns(
        {
            "volume": volume.cast(VOLUME_SQL),
            "quote_volume": quote_volume.cast(QUOTE_VOLUME_SQL),
        }
    )
    return sums.select(
        "exchange",
        "symbol",
        F.timestamp_micros(F.col("_w_start")).alias("window_start"),
        F.timestamp_micros(F.col("_w_end")).alias("window_end"),
        "open",
        "high",
        "low",
        "close",
        "volume",
        "quote_volume",
        "trade_count",
        vwap(F.col("quote_volume"), F.col("volume")).alias("vwap"),
        "open_ts",
        "close_ts",
        F.col("_w_date").alias("trading_date"),
        F.lit(False).alias("synthetic"),
    )
