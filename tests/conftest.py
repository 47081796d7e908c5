"""Fixtures: one real Spark Connect server per test session, started through infra/ code."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from enum import Enum
from pathlib import Path

import pytest
from pydantic import SecretStr
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from infra import stack
from infra.catalog import open_catalog
from infra.session import connect
from settings import Settings
from spark_jobs.tables import Tables, ensure_tables

# A port of its own, so a developer's `make demo` server (15002) is never touched.
TEST_PORT = 15012
TEST_UI_PORT = 14052


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir: Path = tmp_path_factory.mktemp("ohlcv")
    return Settings(
        data_dir=data_dir, connect_port=TEST_PORT, ui_port=TEST_UI_PORT, spark_remote=None
    )


@pytest.fixture(scope="session")
def prefect() -> Iterator[None]:
    """One Prefect test server for the whole session (it takes ~9 s to start)."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


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
