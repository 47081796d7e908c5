"""Resumable backfills: a range cut into chunks, each chunk one flow run, progress on disk.

Finished chunks are recorded under ``<data dir>/backfills/``, so the same command after an
interruption continues with the first unfinished chunk. The file also pins the ``trades``
snapshot every chunk reads, so a resumed backfill reads the same trades as the first chunks
did, and its last chunk may record that snapshot as the table's watermark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core.ranges import Range
from core.timeframes import Timeframe


@dataclass
class BackfillProgress:
    """Which chunks of one backfill are done, kept in a JSON file."""

    path: Path
    trades_snapshot_id: int | None
    done: set[str] = field(default_factory=set)

    @classmethod
    def load(
        cls, data_dir: Path, tf: Timeframe, chunks: list[Range], trades_snapshot_id: int | None
    ) -> BackfillProgress:
        """The stored progress, or a new one pinned to ``trades_snapshot_id``."""
        first, last = chunks[0].start, chunks[-1].end
        name = f"{tf.name}_{first:%Y%m%dT%H%M}_{last:%Y%m%dT%H%M}_{len(chunks)}.json"
        path = data_dir.resolve() / "backfills" / name
        if not path.exists():
            return cls(path, trades_snapshot_id)
        stored = json.loads(path.read_text())
        return cls(path, stored.get("trades_snapshot_id"), set(stored["done"]))

    def todo(self, chunks: list[Range]) -> list[Range]:
        return [c for c in chunks if c.start.isoformat() not in self.done]

    def mark_done(self, chunk: Range) -> None:
        self.done.add(chunk.start.isoformat())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"trades_snapshot_id": self.trades_snapshot_id, "done": sorted(self.done)}
        self.path.write_text(json.dumps(state))
