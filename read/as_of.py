"""``as_of``: which snapshot ``main`` pointed at at a past time, from the snapshot log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from core.time import to_us


class AsOfUnavailable(ValueError):
    """``as_of`` is older than the history the table still keeps."""


def snapshot_as_of(history: Sequence[tuple[int, int]], as_of: datetime, table: str) -> int:
    """The snapshot ``main`` pointed at at ``as_of``.

    Args:
        history: (epoch milliseconds it became current, snapshot id), oldest first: Iceberg's
            snapshot log, which expiry truncates to the snapshots it keeps.
        as_of: the time.
        table: for the error message.
    """
    at_ms = to_us(as_of) // 1000
    chosen = [sid for ms, sid in history if ms <= at_ms]
    if chosen:
        return chosen[-1]
    if not history:
        raise AsOfUnavailable(f"{table} has never been published: there is nothing to read")
    oldest = datetime.fromtimestamp(history[0][0] / 1000, UTC)
    raise AsOfUnavailable(
        f"as_of {as_of.isoformat()} is before the oldest published state of {table} still "
        f"kept ({oldest.isoformat()}; maintenance expires history older than "
        f"OHLCV_SNAPSHOT_RETENTION_H): pass a time at or after {oldest.isoformat()}"
    )
