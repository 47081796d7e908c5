"""The trades feed of `bench/chaos.py`: every few seconds a small batch near the wall clock,
now and then a late batch or a replay of the last one, appended with `ingest` as an upstream
writer would (retrying). Every trade id sent is recorded, to count trades lost at the end."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from chaos_report import Record


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


class Feed:
    """Mixed into the bench's Chaos: the attributes below are set by its constructor."""

    args: Any
    catalog: Any
    settings: Any
    record: Record
    feed_rng: random.Random
    stop_feed: threading.Event
    next_id: int
    fed_to: datetime
    feed_stopped_at: datetime | None

    def feed(self) -> None:
        from core.tables import ensure_tables

        ensure_tables(self.catalog, self.settings.namespace)
        previous = None
        while not self.stop_feed.wait(self.args.feed_every_s):
            try:
                previous = self.feed_once(previous)
            except Exception as e:  # a bug of the bench's: say so, keep feeding
                log(f"feed: {type(e).__name__}: {e}")
        self.feed_stopped_at = datetime.now(UTC)

    def feed_once(self, previous: Any) -> Any:
        """One delivery: the trades since the last one, sometimes a late batch or a replay."""
        now = datetime.now(UTC)
        batch = self.batch(self.fed_to, now)
        self.fed_to = now
        self.deliver(batch)
        if self.feed_rng.random() < 0.15:  # trades of a few minutes ago, arriving late
            back = timedelta(seconds=self.feed_rng.uniform(60, 900))
            self.deliver(self.batch(now - back - timedelta(seconds=20), now - back))
            self.record.late_batches += 1
        if previous is not None and self.feed_rng.random() < 0.1:  # an upstream replay
            self.deliver(previous)
            self.record.replays += 1
        return batch

    def batch(self, start: datetime, end: datetime) -> Any:
        from ingest.demo import demo_trades

        table = demo_trades(
            start=start,
            end=end,
            symbols=[f"C{i:02d}-USD" for i in range(self.args.symbols)],
            trades_per_minute=self.args.per_minute,
            seed=self.feed_rng.randrange(2**31),
            late_fraction=0.05,
            duplicate_fraction=0.02,
            bad_rows=0,
            first_trade_id=self.next_id,
            daily_cycle=False,
        )
        self.next_id += table.num_rows + 1
        return table

    def deliver(self, batch: Any) -> None:
        """Append a batch, retrying as an upstream writer would (ingest is idempotent)."""
        from ingest import ingest

        if not batch.num_rows:
            return
        self.record.sent_ids.update(batch.column("trade_id").to_pylist())
        self.record.batches += 1
        for attempt in range(20):
            try:
                ingest(self.catalog, self.settings.namespace, batch, source=f"chaos-{self.next_id}")
                return
            except Exception as e:  # counted and retried, as a feed would
                self.record.ingest_errors[type(e).__name__] += 1
                log(f"ingest failed ({type(e).__name__}: {str(e)[:200]}), retry {attempt + 1}")
                time.sleep(2)
        log("ingest gave up after 20 attempts: these trades count as lost")
