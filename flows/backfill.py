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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of

from core.ranges import Range
from core.timeframes import Timeframe
from settings import Settings


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
        tf: Timeframe,
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
        give the range.
        """
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
        if chunk_trades is None:
            key["chunk_s"] = chunk.total_seconds()
        else:
            key["chunk_trades"] = chunk_trades
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        first, last = chunks[0].start, chunks[-1].end
        name = f"{tf.name}_{first:%Y%m%dT%H%M}_{last:%Y%m%dT%H%M}_{digest}.json"
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
