"""Longer candles rolled up exactly from 1m candle state, and one chunk's trades read once.

Every window of every timeframe is a union of whole 1m windows, on UTC and on every accepted
calendar (zones with whole- or half-hour offsets, sessions on the half hour): so a longer
candle is the merge of the 1m states it holds. Open and close are the first and last 1m
window's, high and low the extremes, the integer limbs (or decimal sums), trade counts and
first/last trade times add up (:func:`spark_jobs.candles.roll_up`, which the candle step also
uses for a timeframe whose packed ordering key cannot hold the run's trade ids);
:func:`spark_jobs.candles.finish` turns the merged state into a candle exactly as it turns a
1m state into one. Nothing is re-read from the trades, and
nothing is derived from published candles (whose decimal volumes would also sum exactly, but
on ``BigDecimal``, and whose limbs are not stored).

:class:`ChunkAggregate` is what a backfill of several timeframes shares per chunk: the chunk's
trades (one pinned snapshot, one read) aggregated into 1m state once and cached; each
timeframe's run takes its candles from it (:func:`spark_jobs.jobs.recompute` with
``source=``). A rollup is never checked against itself: validation compares a sample of the
rolled-up windows with candles recomputed from the trades (see :mod:`expectations.frames`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from core.calendars import Calendars
from core.ranges import Range, coalesce_ranges
from core.tables import Tables
from core.time import from_us
from core.timeframes import Timeframe
from spark_jobs.candles import ONE_MINUTE, CandleState, candle_state, finish, roll_up
from spark_jobs.ordering import TradeIdRange
from spark_jobs.plan import TradeStats, trade_stats
from spark_jobs.reads import in_ranges, overlapping


@dataclass(frozen=True)
class TradesSample:
    """The trades of a few windows of a chunk's longest timeframe (``probes``: exchange, symbol
    and the window's [_lo, _hi) in microseconds), read afresh from the trades table, once per
    chunk, and cached. Every window of every timeframe that lies inside a probe holds all its
    trades here, so one read checks windows of all the chunk's timeframes."""

    probes: DataFrame
    trades: DataFrame
    trade_ids: TradeIdRange | None


class ChunkAggregate:
    """One chunk's trades, read once at one snapshot and aggregated into cached 1m state, from
    which every timeframe's candles of the chunk come. Use it as a context manager: the cache
    is released on the way out.

    The state covers the chunk widened by the longest window any calendar gives the
    timeframes (none on UTC): a local window overlapping the chunk holds all its trades.
    """

    def __init__(
        self,
        spark: SparkSession,
        tables: Tables,
        window_range: Range,
        trades_snapshot: int,
        timeframes: Sequence[Timeframe],
        calendars: Calendars,
        stats: TradeStats | None = None,
    ) -> None:
        margin = max((calendars.max_window(tf) for tf in timeframes), default=timedelta(0))
        if calendars.all_utc:
            margin = timedelta(0)
        self.window_range = window_range
        self.trades_snapshot = trades_snapshot
        self.calendars = calendars
        read = Range(window_range.start - margin, window_range.end + margin)
        self.trades: DataFrame = (
            spark.read.option("versionAsOf", trades_snapshot)
            .table(tables.trades)
            .where(in_ranges(F.col("ts"), [read]))
        )
        # (a planned chunk's counts are those of its UTC range: a wider read counts its own)
        self.stats = stats if stats is not None and margin == timedelta(0) else None
        self._state: CandleState | None = None
        self._spark = spark
        self._longest = max(timeframes, key=lambda tf: tf.width_us, default=ONE_MINUTE)
        self._sample: TradesSample | None = None
        self._seed = random.randrange(2**31)

    def counted(self) -> TradeStats:
        """The trades read (counted once, unless the plan counted them)."""
        if self.stats is None:
            self.stats = trade_stats(self.trades)
        return self.stats

    def candles(self, tf: Timeframe) -> DataFrame:
        """``tf`` candles of every window the read holds whole (callers keep the windows
        overlapping their chunk), in ``CANDLE_COLUMNS`` without ``computed_at``."""
        if self._state is None:
            stats = self.counted()
            state = candle_state(
                self.trades, ONE_MINUTE, stats.trade_ids, self.calendars, stats.trades
            )
            self._state = CandleState(state.frame.cache(), state.integer_sums)
        if tf == ONE_MINUTE:
            return finish(self._state)
        return finish(roll_up(self._state, tf, self.calendars))

    def trades_sample(self, windows_wanted: int, trades_wanted: int) -> TradesSample | None:
        """Up to ``windows_wanted`` windows of the chunk's longest timeframe, picked at random
        (once per chunk), holding at most ``trades_wanted`` trades in all (at least one
        window), and their trades; None when the chunk has no candle."""
        if self._sample is None:
            self._sample = self._pick(windows_wanted, trades_wanted)
        return self._sample

    def _pick(self, windows_wanted: int, trades_wanted: int) -> TradesSample | None:
        candidates = (
            self.candles(self._longest)
            .where(overlapping(F.col("window_start"), F.col("window_end"), [self.window_range]))
            .select(
                "exchange",
                "symbol",
                F.unix_micros("window_start").alias("_lo"),
                F.unix_micros("window_end").alias("_hi"),
                "trade_count",
            )
            .orderBy(F.xxhash64("exchange", "symbol", "_lo", F.lit(self._seed)))
            .limit(windows_wanted)
            .collect()
        )
        picked: list[tuple[str, str, int, int]] = []
        trades = 0
        for row in candidates:
            if picked and trades + row["trade_count"] > trades_wanted:
                break
            picked.append((row["exchange"], row["symbol"], row["_lo"], row["_hi"]))
            trades += row["trade_count"]
        if not picked:
            return None
        spans = coalesce_ranges([Range(from_us(lo), from_us(hi)) for _, _, lo, hi in picked])
        probes = self._spark.createDataFrame(
            picked, "exchange string, symbol string, _lo long, _hi long"
        )
        ts = F.unix_micros("ts")
        inside = (
            self.trades.where(in_ranges(F.col("ts"), spans))
            .join(F.broadcast(probes), ["exchange", "symbol"])
            .where((ts >= F.col("_lo")) & (ts < F.col("_hi")))
            .drop("_lo", "_hi")
            .cache()
        )
        return TradesSample(probes, inside, self.counted().trade_ids)

    def __enter__(self) -> ChunkAggregate:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._state is not None:
            self._state.frame.unpersist()
            self._state = None
        if self._sample is not None:
            self._sample.trades.unpersist()
            self._sample = None
