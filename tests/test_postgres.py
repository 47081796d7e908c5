"""The Iceberg JDBC catalog on PostgreSQL: where it lives, and a full flow run on it (the core
oracle tests run on it too: ``on_shapes`` in test_candles)."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pytest

from core.timeframes import TIMEFRAMES
from flows.candle_flows import FLOWS
from infra import stack
from infra.catalog_properties import pyiceberg_catalog_properties, spark_catalog_conf
from tests.support.environment import export_settings
from tests.support.oracle import diff, expected_candles, stored_candles
from tests.support.ports import port
from tests.support.stacks import Given, LocalStack, on_shapes
from tests.support.trades import START, deliver, random_trades


@on_shapes("postgres")
def test_the_catalog_lives_in_postgresql(shape: LocalStack) -> None:
    pg_settings = shape.settings
    conf = spark_catalog_conf(pg_settings)
    assert conf["spark.sql.catalog.ohlcv.uri"].startswith(
        f"jdbc:postgresql://127.0.0.1:{port(15432)}/"
    )
    props = pyiceberg_catalog_properties(pg_settings)
    assert props["uri"].startswith("postgresql+psycopg2://ohlcv:")
    assert "ohlcv-test-password" not in stack.status(pg_settings).describe()


@on_shapes("postgres")
def test_a_flow_runs_on_the_postgresql_catalog(
    prefect: None, given: Given, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, pg_spark, catalog, tables = given
    now = START + timedelta(hours=1)
    trades = random_trades(random.Random(81), START, now, 400, first_id=1)
    deliver(catalog, tables, trades, now=now)
    assert settings.catalog_password is not None and settings.catalog_uri is not None
    export_settings(monkeypatch, settings, gx_dir=str(tmp_path / "gx"))

    assert FLOWS["5m"](at=now).published
    tf = TIMEFRAMES["5m"]
    assert not diff(expected_candles(trades, tf), stored_candles(pg_spark, tables.candles(tf)))
