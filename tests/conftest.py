"""Fixtures: one real Spark Connect server per test session, started through infra/ code.

A test that needs a Spark Connect server (the session's, or one of its own) is marked
``spark`` automatically from the fixtures it uses, so ``-m "not spark"`` runs exactly the
tests that need none; tests that start a JVM without a Connect server are marked ``jvm``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import SecretStr
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables, ensure_tables
from infra import stack
from infra.catalog import open_catalog
from infra.session import connect
from settings import Settings, quiet_third_parties

# A port of its own, so a developer's `make demo` server (15002) is never touched;
# TEST_PORT_OFFSET moves the session's server so a second checkout can test beside this one.
PORT_OFFSET = int(os.environ.get("TEST_PORT_OFFSET", "0"))


def port(base: int) -> int:
    """A fixed test port, moved by TEST_PORT_OFFSET like the session's server (every server a
    test starts, and every port a test expects to find closed, goes through here)."""
    return base + PORT_OFFSET


TEST_PORT = port(15012)
TEST_UI_PORT = port(14052)
# Fixtures that start (or are) a Spark Connect server; using one makes a test `spark`.
SERVER_FIXTURES = {"server", "cluster", "pg_settings", "rs_settings"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.spark)


def _environment_keys() -> list[str]:
    return [k for k in os.environ if k.startswith("OHLCV_") or k == "SPARK_REMOTE"]


@pytest.fixture(scope="session", autouse=True)
def _clean_session_environment() -> Iterator[None]:
    """No exported OHLCV_* or SPARK_REMOTE may change what a test sees (session fixtures too)."""
    with pytest.MonkeyPatch.context() as patch:
        for key in _environment_keys():
            patch.delenv(key)
        yield


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for each test: what one test exports does not leak into the next."""
    for key in _environment_keys():
        monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir: Path = tmp_path_factory.mktemp("ohlcv")
    return Settings(
        data_dir=data_dir, connect_port=TEST_PORT, ui_port=TEST_UI_PORT, spark_remote=None
    )


@pytest.fixture(scope="session")
def prefect() -> Iterator[None]:
    """One Prefect test server for the whole session (it takes ~9 s to start)."""
    quiet_third_parties()
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
        # The harness drains Prefect's workers with no timeout: drain them first with one, so
        # a worker stuck on a dead server fails here instead of hanging the session's end.
        drain_prefect_workers()


def drain_prefect_workers(timeout_s: float = 60) -> None:
    """Stop Prefect's event and log workers (client-side queue services) once they have sent
    what they hold, and forget them.

    They are process-wide singletons bound, when first used, to the API of that moment, and the
    event worker's key does not include the URL: left running, a worker bound to a server a test
    has since stopped would serve later flow runs and hang the harness's teardown, which drains
    them without a timeout. The next use starts fresh ones on the current API.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        # (in sync code drain_all waits and returns (done, not done); a stopped service has
        # already left the registry, so a timeout cannot leave it to the next test)
        _, pending = cast(Any, service.drain_all(timeout=timeout_s, at_exit=False))
        assert not pending, f"Prefect's {service.__name__} did not drain within {timeout_s} s"


@contextmanager
def prefect_api(url: str) -> Iterator[None]:
    """Flow runs in this block use the Prefect API at ``url`` (a server of the test's own).

    Prefect's workers are drained on the way in (the ones bound to the API before must not carry
    this block's events) and on the way out, while ``url``'s server still runs (it may be
    stopped right after).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    drain_prefect_workers()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        drain_prefect_workers()


@pytest.fixture(scope="session")
def server(settings: Settings) -> Iterator[stack.StackStatus]:
    status = stack.up(settings)
    yield status
    stack.down(settings)


@pytest.fixture(scope="session")
def spark(server: stack.StackStatus, settings: Settings) -> Iterator[SparkSession]:
    session = connect(settings)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def catalog(settings: Settings) -> Catalog:
    return open_catalog(settings)


@pytest.fixture
def tables(catalog: Catalog, settings: Settings, server: stack.StackStatus) -> Tables:
    """Empty trades, rejects and candle tables in a namespace of this test's own."""
    namespace = f"t_{uuid.uuid4().hex[:12]}"
    ensure_tables(catalog, namespace)
    return Tables(settings.catalog_name, namespace)


@pytest.fixture
def run_settings(settings: Settings, tables: Tables, tmp_path: Path) -> Settings:
    """Settings of this test's namespace, with a GX project (results, data docs) of its own."""
    return settings.model_copy(update={"namespace": tables.namespace, "gx_dir": tmp_path / "gx"})


def export_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings, **overrides: str) -> None:
    """Make the code's own ``Settings()`` (flows, notebooks) read ``settings``, via OHLCV_*."""
    for name, value in settings.model_dump().items():
        key = f"OHLCV_{name.upper()}"
        if name == "spark_remote" or value is None:
            monkeypatch.delenv(key, raising=False)
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        monkeypatch.setenv(key, str(value.value if isinstance(value, Enum) else value))
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    for name, value in overrides.items():
        monkeypatch.setenv(f"OHLCV_{name.upper()}", value)


@pytest.fixture
def flow_env(prefect: None, run_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Point the flows' own Settings() at this test's server, namespace and GX project."""
    export_settings(
        monkeypatch, run_settings, generate_retry_delay_s="0", validate_retry_delay_s="0"
    )
    return Settings()
