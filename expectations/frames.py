"""The DataFrames the suites validate: exactly the windows a run wrote, plus derived columns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from core.calendars import Calendars, is_daily
from core.ranges import Range, coalesce_ranges
from core.tables import CANDLE_KEY, Tables
from core.timeframes import Timeframe, rollup_source
from expectations.suites import RECONCILED
from spark_jobs.candles import (
    CANDLE_COLUMNS,
    QUOTE_VOLUME_SQL,
    VOLUME_SQL,
    candles,
    vwap,
    windows,
)
from spark_jobs.reads import in_ranges, read_candles
from spark_jobs.rollup import TradesSample


def is_synthetic() -> Column:
    """Whether a candle is synthetic; rows written before the column existed are real."""
    return F.coalesce(F.col("synthetic"), F.lit(False))


def with_window_columns(
    candles: DataFrame, tf: Timeframe, calendars: Calendars | None = None
) -> DataFrame:
    """Add the derived columns the invariant suite checks.

    - ``window_offset_us``, ``window_length_error_us``, ``trading_date_error_days``: how far
      the window and its date are from the window the instrument's calendar puts at
      ``window_start`` (0: exact; -1 when the calendar has no window there);
    - ``<c>_real``: volume, quote_volume and trade_count of real candles (null for synthetic
      ones, which the range checks skip), ``open_ts_present`` and ``close_ts_present``;
    - ``synthetic_is_flat``: true unless a synthetic candle is not flat with no trades.
    """
    start = F.unix_micros(F.col("window_start"))
    end = F.unix_micros(F.col("window_end"))
    want_start, want_end, want_date = windows(F.col("window_start"), tf, calendars)
    synthetic = is_synthetic()
    flat = (
        (F.col("open") == F.col("high"))
        & (F.col("high") == F.col("low"))
        & (F.col("low") == F.col("close"))
        & (F.col("vwap") == F.col("close"))
        & (F.col("volume") == 0)
        & (F.col("quote_volume") == 0)
        & (F.col("trade_count") == 0)
        & F.col("open_ts").isNull()
        & F.col("close_ts").isNull()
    )
    return candles.withColumns(
        {
            # A null column is the not-null checks' finding alone (these skip it); a window
            # start the calendar has no window for counts as misplaced (-1).
            "window_offset_us": F.when(
                F.col("window_start").isNotNull(), F.coalesce(start - want_start, F.lit(-1))
            ),
            "window_length_error_us": F.when(
                F.col("window_start").isNotNull() & F.col("window_end").isNotNull(),
                F.coalesce((end - start) - (want_end - want_start), F.lit(-1)),
            ),
            "trading_date_error_days": F.when(
                F.col("window_start").isNotNull() & F.col("trading_date").isNotNull(),
                F.coalesce(F.datediff(F.col("trading_date"), want_date), F.lit(-1)),
            ),
            "volume_real": F.when(~synthetic, F.col("volume")),
            "quote_volume_real": F.when(~synthetic, F.col("quote_volume")),
            "trade_count_real": F.when(~synthetic, F.col("trade_count")),
            "open_ts_present": synthetic | F.col("open_ts").isNotNull(),
            "close_ts_present": synthetic | F.col("close_ts").isNotNull(),
            "synthetic_is_flat": ~synthetic | F.coalesce(flat, F.lit(False)),
        }
    )


def rollup(candles: DataFrame, tf: Timeframe, calendars: Calendars | None = None) -> DataFrame:
    """Roll smaller real candles up into ``tf`` windows, the way the candles themselves are
    defined (per instrument calendar; a small candle outside every session is dropped).

    Synthetic candles are left out: they hold no trade, and a flat candle at the previous
    close would otherwise become the open of a window whose first trade came later.
    """
    start, end, day = windows(F.col("window_start"), tf, calendars)
    located = candles.where(~is_synthetic()).select(
        "*", start.alias("_w"), end.alias("_e"), day.alias("_d")
    )
    grouped = (
        located.where(F.col("_w").isNotNull())
        .groupBy("exchange", "symbol", "_w", "_e", "_d")
        .agg(
            F.min_by("open", "window_start").alias("open"),
            F.max("high").alias("high"),
            F.min("low").alias("low"),
            F.max_by("close", "window_start").alias("close"),
            F.sum("volume").cast(VOLUME_SQL).alias("volume"),
            F.sum("quote_volume").cast(QUOTE_VOLUME_SQL).alias("quote_volume"),
            F.sum("trade_count").alias("trade_count"),
            F.min("open_ts").alias("open_ts"),
            F.max("close_ts").alias("close_ts"),
        )
    )
    return grouped.withColumns(
        {
            "window_start": F.timestamp_micros(F.col("_w")),
            "window_end": F.timestamp_micros(F.col("_e")),
            "vwap": vwap(F.col("quote_volume"), F.col("volume")),
            "trading_date": F.col("_d"),
            "synthetic": F.lit(False),
        }
    ).select(*CANDLE_COLUMNS)


def reconciliation_frame(
    spark: SparkSession,
    tables: Tables,
    tf: Timeframe,
    ranges: Sequence[Range],
    branch: str | None,
    calendars: Calendars | None = None,
    written: DataFrame | None = None,
) -> DataFrame | None:
    """Real candles a run wrote side by side with the rollup of the smaller timeframe's
    ``main`` (synthetic candles hold no trades to reconcile).

    A full outer join on the key: ``in_candles`` / ``in_rollup`` flag windows present on one
    side only, ``rollup_<column>`` holds the rolled-up value. None for 1m (nothing smaller).
    ``written``: the run's candles as already read from ``branch`` (else read here).
    """
    source = rollup_source(tf)
    if source is None:
        return None
    if written is None:
        written = read_candles(spark, tables.candles(tf), ranges, branch)
    written = written.where(~is_synthetic()).select(*CANDLE_COLUMNS)
    if calendars is None or calendars.all_utc:
        smaller = read_candles(spark, tables.candles(source), ranges)
        rolled_all = rollup(smaller, tf)
    else:
        # A local window starting in the ranges may end after them: roll up every smaller
        # candle it can hold, then keep the windows that start in the ranges.
        margin = calendars.max_window(tf)
        wider = coalesce_ranges([Range(r.start - margin, r.end + margin) for r in ranges])
        smaller = read_candles(spark, tables.candles(source), wider)
        rolled_all = rollup(smaller, tf, calendars).where(in_ranges(F.col("window_start"), ranges))
    rolled = rolled_all.select(
        *CANDLE_KEY,
        *[F.col(c).alias(f"rollup_{c}") for c in RECONCILED],
        F.lit(True).alias("in_rollup"),
    )
    joined = written.withColumn("in_candles", F.lit(True)).join(
        rolled, list(CANDLE_KEY), "full_outer"
    )
    return joined.fillna(False, subset=["in_candles", "in_rollup"])


def trades_sample_frame(
    tf: Timeframe,
    written: DataFrame,
    sample: TradesSample,
    calendars: Calendars | None = None,
) -> DataFrame:
    """The real candles a run wrote whose window lies inside one of ``sample``'s probe
    windows (of the chunk's longest timeframe, same instrument), side by side with the same
    windows recomputed from the sample's trades by :func:`spark_jobs.candles.candles`
    (``trades_<column>``; ``in_trades`` false where the trades hold no such candle).

    Every shorter window nests in a longer one (see :mod:`spark_jobs.rollup`), so a probe
    holds whole windows of every timeframe: one read of the trades serves the whole chunk.
    """
    probes = F.broadcast(sample.probes)

    def inside_probes(frame: DataFrame) -> DataFrame:
        start, end = F.unix_micros("window_start"), F.unix_micros("window_end")
        return (
            frame.join(probes, ["exchange", "symbol"])
            .where((start >= F.col("_lo")) & (end <= F.col("_hi")))
            .drop("_lo", "_hi")
        )

    recomputed = inside_probes(
        candles(sample.trades, tf, sample.trade_ids, calendars=calendars)
    ).select(
        *CANDLE_KEY,
        *[F.col(c).alias(f"trades_{c}") for c in RECONCILED],
        F.lit(True).alias("in_trades"),
    )
    sampled = inside_probes(written.where(~is_synthetic()).select(*CANDLE_COLUMNS))
    joined = sampled.join(recomputed, list(CANDLE_KEY), "left")
    return joined.fillna(False, subset=["in_trades"])


GAP_KEY = ("exchange", "symbol", "trading_date")
GAP_COLUMNS = (*GAP_KEY, "windows", "real_windows", "empty_windows")


def gap_counts(candles: DataFrame, tf: Timeframe) -> DataFrame:
    """Per (exchange, symbol, local trading date) of these candles: how many windows lie
    from the first candle to the last, how many had trades, and how many had none (missing,
    or synthetic under gap policy previous_close). Not for daily candles (a day without
    trades is a weekend or a holiday as often as an outage)."""
    start = F.unix_micros(F.col("window_start"))
    per_day = candles.groupBy("exchange", "symbol", "trading_date").agg(
        F.min(start).alias("_lo"),
        F.max(start).alias("_hi"),
        F.sum((~is_synthetic()).cast("long")).alias("real_windows"),
    )
    spanned = ((F.col("_hi") - F.col("_lo")) / F.lit(tf.width_us)).cast("long") + F.lit(1)
    return per_day.select(
        "exchange",
        "symbol",
        "trading_date",
        spanned.alias("windows"),
        "real_windows",
        (spanned - F.col("real_windows")).alias("empty_windows"),
    )


def gap_rows(candles: pd.DataFrame, tf: Timeframe) -> list[dict[str, Any]] | None:
    """:func:`gap_counts`'s rows from candles a run
    already collected (the invariant frame, for validation in pandas): no query of its own.
    None for daily candles."""
    if is_daily(tf):
        return None
    start = pd.to_datetime(candles["window_start"], utc=True).astype("int64") // 1000
    synthetic = candles["synthetic"].astype(object).where(candles["synthetic"].notna(), False)
    located = pd.DataFrame(
        {
            "exchange": candles["exchange"],
            "symbol": candles["symbol"],
            "trading_date": candles["trading_date"],
            "_start": start,
            "_real": (~synthetic.astype(bool)).astype("int64"),
        }
    )
    per_day = (
        located.groupby(list(GAP_KEY), dropna=False, sort=True)
        .agg(_lo=("_start", "min"), _hi=("_start", "max"), real_windows=("_real", "sum"))
        .reset_index()
    )
    spanned = (per_day["_hi"] - per_day["_lo"]) // tf.width_us + 1
    per_day["windows"] = spanned
    per_day["empty_windows"] = spanned - per_day["real_windows"]
    for key in GAP_KEY:  # a missing key is a group of its own, as in Spark: None, not NaN
        per_day[key] = [None if pd.isna(v) else v for v in per_day[key]]
    return per_day[list(GAP_COLUMNS)].to_dict("records")  # type: ignore[return-value]


def gap_order(row: Mapping[str, Any]) -> tuple[tuple[bool, Any], ...]:
    """Sort key of a gap report row: exchange, symbol, trading date; missing values first."""
    return tuple((row[key] is not None, row[key]) for key in GAP_KEY)
