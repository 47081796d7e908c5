"""What commands need before they call the library: a place for flow runs, the tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from infra import prefect_server
from settings import Settings


@contextmanager
def flow_context(settings: Settings) -> Iterator[None]:
    """Where flow runs go: fail at once, in one line, when one could not work (no Spark
    Connect server, a URL the client cannot use, no Prefect server), else run the block
    against the user's PREFECT_API_URL or the local Prefect server. Without the checks, a flow
    run would start, record a failure and print Prefect's traceback first."""
    from infra.session import probe

    probe(settings)  # before Prefect's import: a stack that is down fails in a blink
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url(settings)}):
        yield


def prepare_tables(settings: Settings) -> None:
    """Create the namespace and tables the commands need, if missing."""
    from core.tables import ensure_tables
    from infra.catalog import open_catalog

    ensure_tables(open_catalog(settings), settings.namespace)
