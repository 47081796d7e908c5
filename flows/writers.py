"""One writer per table, whatever starts it: a scheduled run, `ohlcv run`, a backfill chunk or
maintenance.

Iceberg's MERGE can insert the same candle twice when two writers race
(apache/iceberg#12653), and a deployment's own concurrency limit only covers that deployment.
So every writer of a table holds the table's slot on a Prefect global concurrency limit of 1
(named ``ohlcv-writer-<catalog>.<namespace>.<table>``) for as long as it writes. The slot is a
lease that the holder renews while it runs: when the holder dies (kill -9, a lost machine) the
server takes the slot back once the lease runs out, so a crash never leaves the table stuck.
A second writer waits up to ``OHLCV_WRITER_WAIT_S`` for the slot, then gives up with a clear
message; nothing is written in that case.

A command run with no Prefect server to answer (`ohlcv ingest` on a laptop) holds
:func:`local_writer` instead: a lock file of the data directory, which the kernel releases when
its holder dies, so two such commands on one machine never write ``trades`` side by side.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

from settings import Settings


class WriterBusy(RuntimeError):
    """Another writer held the table for longer than this one was willing to wait."""


def writer_slot(settings: Settings, table: str) -> str:
    """The name of a table's writer slot (one per catalog, namespace and table)."""
    return f"ohlcv-writer-{settings.catalog_name}.{settings.namespace}.{table}"


@contextmanager
def one_writer(settings: Settings, table: str) -> Iterator[None]:
    """Hold the table's writer slot for the block (see the module docstring)."""
    name = writer_slot(settings, table)
    with get_client(sync_client=True) as client:
        # Idempotent; a limit of 1 is what makes the slot exclusive.
        client.upsert_global_concurrency_limit_by_name(name, 1)
    with ExitStack() as held:
        try:
            held.enter_context(
                concurrency(
                    name,
                    occupy=1,
                    timeout_seconds=settings.writer_wait_s,
                    lease_duration=settings.writer_lease_s,
                    strict=True,
                )
            )
        except TimeoutError:  # only waiting for the slot: the block's own errors pass through
            raise WriterBusy(
                f"another writer (a scheduled run, `ohlcv run`, a backfill or maintenance) has "
                f"held {table} for more than {settings.writer_wait_s:.0f} s "
                "(OHLCV_WRITER_WAIT_S); nothing was written: try again once it is done (a crashed "
                f"writer's hold ends by itself within {settings.writer_lease_s:.0f} s)"
            ) from None
        yield


@contextmanager
def local_writer(settings: Settings, table: str) -> Iterator[None]:
    """Hold ``table``'s lock file in the data directory for the block: one writer per machine
    when no Prefect server holds the slots. Waits like :func:`one_writer`.

    Raises:
        WriterBusy: another process of this machine held it for ``writer_wait_s``.
    """
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    path = settings.stack_dir / f"{writer_slot(settings, table)}.lock"
    deadline = time.monotonic() + settings.writer_wait_s
    with path.open("a") as held:
        while True:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WriterBusy(
                        f"another command of this machine has held {table} for more than "
                        f"{settings.writer_wait_s:.0f} s (OHLCV_WRITER_WAIT_S; its lock: {path}); "
                        "nothing was written: try again once it is done"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
