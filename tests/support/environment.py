"""The environment a test runs in: no exported OHLCV_* leaks in, and settings can be exported."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import pytest
from pydantic import SecretStr
from pyiceberg.catalog import Catalog

from infra.catalog import open_catalog
from settings import CatalogType, Settings

SHORT_LIVED_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
"""The JVM options of every server a test starts of its own (to kill it, another shape, a
cluster): it lives briefly on little data, so the JIT's optimizing tier and G1's concurrent
threads cost more than they return. Measured (2 cores, CPU seconds of the JVMs): the
kill-at-any-point test, four fresh servers, 201 -> 109 (the serial GC alone: 183); in a full
run the fault tests' time fell from 760 to 596 s and the shape tests' with them."""

SESSION_JAVA_OPTIONS = "-XX:+UseSerialGC"
"""The session's own servers (one per worker) serve most of the suite and warm up, so they keep
the JIT's optimizing tier (:func:`tests.support.stacks.session_settings`). test_candles and
test_wap on the session server, alone, 2 cores (wall s / the JVM's CPU s): the JVM's defaults
138 / 195, C1 and the serial GC 150 / 170, the serial GC alone 133 / 168."""

SUITE_ENVIRONMENT = {"OHLCV_SERVER_JAVA_OPTIONS": SHORT_LIVED_JAVA_OPTIONS}
"""What every test runs with."""


def environment_keys() -> list[str]:
    """The variables that change what ``Settings()`` reads."""
    return [k for k in os.environ if k.startswith("OHLCV_") or k == "SPARK_REMOTE"]


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


def sqlite_catalog(data_dir: Path) -> Catalog:
    """A catalog of its own in ``data_dir`` (SQLite and a local warehouse): PyIceberg only, no
    server."""
    settings = Settings(
        data_dir=data_dir, catalog_type=CatalogType.SQLITE, catalog_uri=None, warehouse=None
    )
    return open_catalog(settings)
