"""Resumable backfills: a range cut into chunks, each chunk one flow run, progress on disk.

Finished chunks are recorded under ``<data dir>/backfills/``, so the same command after an
interruption continues with the first unfinished chunk. A progress file belongs to exactly one
backfill: its name and contents hold everything that makes a backfill unique (catalog,
namespace, table and its Iceberg UUID, timeframe, range, chunk size), so the same command
against another catalog or namespace, or after the table was recreated, starts afresh. A chunk
counts as done only while the candle snapshot its run left on ``main`` is still in the table's
history: nothing is skipped that the table does not hold.

The file also pins the ``trades`` snapshot every chunk reads, so a resumed backfill reads the
same trades as the first chunks did, and its last chunk may record that snapshot as the
table's watermark.

:func:`run_backfill` is the one backfill: ``ohlcv backfill`` runs it with each chunk a Prefect
flow run, tests and benchmarks with each chunk the plain pipeline in their own session
(:func:`in_session`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of

from core.ranges import Range, backfill_ranges
from core.tables import TRADES, Tables, ensure_tables
from core.timeframes import Timeframe
from flows.pipeline import RunRequest, Steps, run_pipeline, tables_for
from flows.results import RunMetrics
from infra.catalog import open_catalog
from settings import Settings
from spark_jobs.rollup import ChunkAggregate

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from spark_jobs.jobs import TradeStats

ChunkRunner = Callable[[RunRequest], list[RunMetrics]]
"""Runs one chunk's request for every timeframe of the backfill, in order: a Prefect flow run
(:func:`as_flow_runs`), or the pipeline in a session (:func:`in_session`)."""


@dataclass
class BackfillProgress:
    """Which chunks of one backfill are done (chunk start -> candle snapshot after it)."""

    path: Path
    key: dict[str, Any]
    trades_snapshot_id: int | None
    done: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        settings: Settings,
        candles: Table,
        tf: Timeframe | Sequence[Timeframe],
        chunks: list[Range],
        chunk: timedelta,
        trades_snapshot_id: int | None,
        *,
        restart: bool = False,
        chunk_trades: int | None = None,
    ) -> BackfillProgress:
        """The stored progress of this very backfill (verified), or a new one.

        ``restart`` forgets the stored progress: every chunk is recomputed, pinned to
        ``trades_snapshot_id``. With ``chunk_trades`` the chunks are sized by trades, planned on
        the pinned snapshot (so a resumed backfill cuts the same ones); ``chunks`` then only
        give the range. With several timeframes (one pass over the trades for all), ``candles``
        is the last one's table: its snapshot after a chunk is the chunk's mark.
        """
        timeframes = [tf] if isinstance(tf, Timeframe) else list(tf)
        tf = timeframes[-1]
        key: dict[str, Any] = {
            "catalog": settings.catalog_name,
            "catalog_type": settings.catalog_type.value,
            "catalog_uri": settings.catalog_uri or str(settings.sqlite_path),
            "namespace": settings.namespace,
            "table": tf.table,
            "table_uuid": str(candles.metadata.table_uuid),
            "timeframe": tf.name,
            "start": chunks[0].start.isoformat(),
            "end": chunks[-1].end.isoformat(),
        }
        if len(timeframes) > 1:
            key["timeframes"] = [t.name for t in timeframes]
        if chunk_trades is None:
            key["chunk_s"] = chunk.total_seconds()
        else:
            key["chunk_trades"] = chunk_trades
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        first, last = chunks[0].start, chunks[-1].end
        label = "+".join(t.name for t in timeframes)
        name = f"{label}_{first:%Y%m%dT%H%M}_{last:%Y%m%dT%H%M}_{digest}.json"
        path = settings.data_dir.resolve() / "backfills" / name
        if restart or not path.exists():
            return cls(path, key, trades_snapshot_id)
        stored = json.loads(path.read_text())
        if stored.get("key") != key:  # a digest collision, or a file written by hand
            return cls(path, key, trades_snapshot_id)
        done = {start: snapshot for start, snapshot in stored["done"].items()}
        progress = cls(path, key, stored.get("trades_snapshot_id"), done)
        progress.verify(candles)
        return progress

    def verify(self, candles: Table) -> list[str]:
        """Forget chunks whose candle snapshot is no longer in the table's history."""
        current = candles.current_snapshot()
        history = (
            {s.snapshot_id for s in ancestors_of(current, candles.metadata)} if current else set()
        )
        gone = [start for start, snapshot in self.done.items() if snapshot not in history]
        for start in gone:
            del self.done[start]
        return gone

    def todo(self, chunks: list[Range]) -> list[Range]:
        return [c for c in chunks if c.start.isoformat() not in self.done]

    def mark_done(self, chunk: Range, candle_snapshot_id: int | None) -> None:
        self.done[chunk.start.isoformat()] = candle_snapshot_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "key": self.key,
            "trades_snapshot_id": self.trades_snapshot_id,
            "done": self.done,
        }
        partial = self.path.with_name(self.path.name + ".part")
        partial.write_text(json.dumps(state, indent=1))
        partial.replace(self.path)  # a crash mid-write never leaves a torn file


@dataclass(frozen=True)
class ChunkDone:
    """One finished chunk of a backfill and what its runs reported, one per timeframe."""

    window: Range
    runs: list[RunMetrics]

    @property
    def metrics(self) -> RunMetrics:
        """The first timeframe's run (the only one of a backfill of one timeframe)."""
        return self.runs[0]


@dataclass
class Backfill:
    """A planned backfill: its chunks and the ones still to do. Iterating runs those, oldest
    first, recording each as done once its run returned."""

    timeframes: list[Timeframe]
    chunks: list[Range]
    todo: list[Range]
    requests: dict[Range, RunRequest]
    progress: BackfillProgress
    run_chunk: ChunkRunner

    @property
    def tf(self) -> str:
        """The timeframes backfilled, by name (``1m``, or ``1m+5m+30m+1h+1d``)."""
        return "+".join(t.name for t in self.timeframes)

    @property
    def resumed(self) -> int:
        """Chunks already done by an earlier run of the same backfill."""
        return len(self.chunks) - len(self.todo)

    def __iter__(self) -> Iterator[ChunkDone]:
        for window in self.todo:
            runs = self.run_chunk(self.requests[window])
            self.progress.mark_done(window, runs[-1].main_snapshot_id)
            yield ChunkDone(window, runs)


def run_backfill(
    settings: Settings,
    tf: Timeframe | Sequence[Timeframe],
    start: datetime,
    end: datetime,
    *,
    chunk: timedelta = timedelta(days=1),
    chunk_trades: int | None = None,
    restart: bool = False,
    spark: SparkSession | None = None,
    run_chunk: ChunkRunner | None = None,
) -> Backfill:
    """Recompute every window of [start, end) chunk by chunk, each chunk audited and published
    on its own; iterate the result to run the chunks not done yet.

    Every chunk reads the trades snapshot current when the backfill first started (kept in its
    progress file); the last one records it as the watermark of a table that has none, when
    the backfill covered every trade.

    Several timeframes (``ohlcv backfill all``) are backfilled in one pass over the trades:
    chunks of whole windows of the longest one; per chunk the trades are read and aggregated
    into 1m state once (:class:`spark_jobs.rollup.ChunkAggregate`), and each timeframe, shortest
    first, is generated from it (longer ones rolled up), validated on its audit branch and
    published before the next.

    Args:
        chunk: the length of a chunk.
        chunk_trades: size chunks by trades instead, about this many each (planned on the
            pinned snapshot, so a resumed backfill cuts the same chunks); each chunk's run gets
            the trade counts of the plan and does not count them again.
        restart: recompute every chunk, also those a previous run finished.
        spark: run each chunk as the plain pipeline in this session (:func:`in_session`:
            tests, benchmarks, notebooks) instead of as a flow run of the timeframe's Prefect
            flow (:func:`as_flow_runs`, what ``ohlcv backfill`` does).
        run_chunk: any other way to run a chunk.
    """
    timeframes = sorted([tf] if isinstance(tf, Timeframe) else tf, key=lambda t: t.width)
    longest = timeframes[-1]
    chunks = backfill_ranges(longest, start, end, chunk)
    catalog = open_catalog(settings)
    ensure_tables(catalog, settings.namespace)
    pinned = catalog.load_table((settings.namespace, TRADES)).current_snapshot()
    candles = catalog.load_table((settings.namespace, longest.table))
    progress = BackfillProgress.load(
        settings,
        candles,
        timeframes,
        chunks,
        chunk,
        pinned.snapshot_id if pinned else None,
        restart=restart,
        chunk_trades=chunk_trades,
    )
    stats: dict[Range, TradeStats] = {}
    if chunk_trades is not None and progress.trades_snapshot_id is not None:
        stats = _chunks_by_trades(
            settings, longest, chunks, progress.trades_snapshot_id, chunk_trades, spark
        )
        chunks = list(stats)
    requests = {
        r.window_range: r
        for r in backfill_requests(chunks, progress.trades_snapshot_id, stats)
        if r.window_range is not None
    }
    if run_chunk is None:
        run_chunk = (
            as_flow_runs(timeframes) if spark is None else in_session(spark, settings, timeframes)
        )
    return Backfill(timeframes, chunks, progress.todo(chunks), requests, progress, run_chunk)


def backfill_requests(
    chunks: list[Range],
    trades_snapshot_id: int | None,
    stats: dict[Range, TradeStats] | None = None,
) -> list[RunRequest]:
    """One request per chunk, all pinned to one trades snapshot; the last completes the range."""
    covered = Range(chunks[0].start, chunks[-1].end)
    return [
        RunRequest(
            window_range=chunk,
            trades_snapshot_id=trades_snapshot_id,
            completes=covered if i == len(chunks) - 1 else None,
            stats=(stats or {}).get(chunk),
        )
        for i, chunk in enumerate(chunks)
    ]


def _chunks_by_trades(
    settings: Settings,
    tf: Timeframe,
    chunks: list[Range],
    pinned: int,
    chunk_trades: int,
    spark: SparkSession | None,
) -> dict[Range, TradeStats]:
    """Chunks of about ``chunk_trades`` trades each, with their trade counts: planned in
    ``spark`` when the chunks run there, else in a session of their own."""
    from infra.session import session
    from spark_jobs.plan import plan_chunks

    with ExitStack() as held:
        if spark is None:
            spark = held.enter_context(session(settings))
        tables = Tables(settings.catalog_name, settings.namespace)
        planned = plan_chunks(
            spark, tables, tf, chunks[0].start, chunks[-1].end, pinned, chunk_trades
        )
    return {c.window_range: c.stats for c in planned}


def as_flow_runs(timeframes: list[Timeframe]) -> ChunkRunner:
    """Each chunk a flow run (what ``ohlcv backfill`` does): of the timeframe's Prefect flow,
    or for several timeframes of the backfill flow, which shares one read of the trades."""

    def run(request: RunRequest) -> list[RunMetrics]:
        from flows.candle_flows import FLOWS, backfill_flow

        assert request.window_range is not None
        stats = request.stats
        parameters: dict[str, Any] = {
            "window_start": request.window_range.start,
            "window_end": request.window_range.end,
            "trades_snapshot_id": request.trades_snapshot_id,
            "backfill_start": request.completes.start if request.completes else None,
            "chunk_trades": stats.trades if stats else None,
            "chunk_trade_ids": (
                (stats.trade_ids.low, stats.trade_ids.high) if stats and stats.trade_ids else None
            ),
        }
        if len(timeframes) == 1:
            return [FLOWS[timeframes[0].name](**parameters)]
        return backfill_flow(timeframes=[t.name for t in timeframes], **parameters)

    return run


def in_session(
    spark: SparkSession, settings: Settings, timeframes: Timeframe | list[Timeframe]
) -> ChunkRunner:
    """Each chunk the plain pipeline (no Prefect) in the caller's session: tests, benchmarks."""
    if isinstance(timeframes, Timeframe):
        timeframes = [timeframes]
    return lambda request: run_chunk_pipelines(spark, settings, timeframes, request, None)


def run_chunk_pipelines(
    spark: SparkSession,
    settings: Settings,
    timeframes: list[Timeframe],
    request: RunRequest,
    steps: Steps | None,
) -> list[RunMetrics]:
    """One chunk of a backfill: each timeframe's pipeline in turn, shortest first; with
    several, all from one aggregation of the chunk's trades."""
    if len(timeframes) == 1:
        tf = timeframes[0]
        return [RunMetrics.of(tf, run_pipeline(spark, settings, tf, request, steps))]
    assert request.window_range is not None
    snapshot = request.trades_snapshot_id
    if snapshot is None:  # trades was empty when the backfill started: nothing to read
        return [
            RunMetrics.of(tf, run_pipeline(spark, settings, tf, request, steps))
            for tf in timeframes
        ]
    with ChunkAggregate(
        spark,
        tables_for(settings),
        request.window_range,
        snapshot,
        timeframes,
        settings.market().calendars,
        request.stats,
    ) as aggregate:
        shared = replace(request, aggregate=aggregate)
        return [
            RunMetrics.of(tf, run_pipeline(spark, settings, tf, shared, steps)) for tf in timeframes
        ]
