"""What one candle run read, recomputed and wrote: the record every job step fills in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from core.ranges import Range

if TYPE_CHECKING:
    from spark_jobs.rollup import ChunkAggregate


@dataclass
class RunResult:
    """What one candle run read, recomputed and wrote."""

    timeframe: str
    ranges: list[Range]
    trades_snapshot_id: int | None
    previous_watermark: int | None
    watermark: int | None
    trades_read: int = 0
    new_trades: int = 0
    late_trades: int = 0
    pending_trades: int = 0
    """Trades appended since the watermark that are left for the next runs (bounded catch-up)."""
    windows_recomputed: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    revised: int = 0
    """Updated candles that had been published after their window closed (late trades)."""
    revisions: pa.Table | None = None
    """Those candles' keys with ``old_``/``new_`` values (at most ``MAX_REVISIONS_KEPT``)."""
    candle_snapshot_id: int | None = None
    source: ChunkAggregate | None = field(default=None, repr=False, compare=False)
    """The chunk's aggregate the candles came from (a backfill of several timeframes; its
    trades sample is shared by the validations of all the chunk's timeframes)."""
    notes: list[str] = field(default_factory=list)

    @property
    def written(self) -> bool:
        return self.inserted + self.updated > 0

    @property
    def rolled_up(self) -> bool:
        """The candles came from a chunk's shared 1m state (:mod:`spark_jobs.rollup`; longer
        timeframes rolled up from it): validation also recomputes a sample of them from the
        trades, the independent check of a rollup."""
        return self.source is not None
