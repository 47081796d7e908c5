"""The same oracle tests and a full flow run with the Iceberg JDBC catalog on PostgreSQL."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables, ensure_tables
from core.timeframes import TIMEFRAMES
from flows.candle_flows import FLOWS
from infra import stack
from infra.catalog import open_catalog
from infra.catalog_properties import pyiceberg_catalog_properties, spark_catalog_conf
from infra.session import close, connect
from settings import CatalogType, Settings
from tests import test_candles
from tests.conftest import export_settings, port
from tests.helpers import START, deliver, random_trades
from tests.oracle import diff, expected_candles, stored_candles
from tests.postgres import running_postgres


@pytest.fixture(scope="module")
def pg_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with running_postgres(port(15432)) as pg:
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("pg"),
            connect_port=port(15014),
            ui_port=port(14054),
            catalog_type=CatalogType.POSTGRES,
            catalog_uri=pg.jdbc_url,
            catalog_user=pg.user,
            catalog_password=SecretStr(pg.password),
            spark_remote=None,
        )
        stack.up(settings)
        try:
            yield settings
        finally:
            stack.down(settings)


@pytest.fixture(scope="module")
def pg_spark(pg_settings: Settings) -> Iterator[SparkSession]:
    spark = connect(pg_settings)
    yield spark
    close(spark)


@pytest.fixture
def pg(pg_settings: Settings) -> tuple[Settings, Catalog, Tables]:
    namespace = f"p_{uuid.uuid4().hex[:12]}"
    catalog = open_catalog(pg_settings)
    ensure_tables(catalog, namespace)
    return (
        pg_settings.model_copy(update={"namespace": namespace}),
        catalog,
        Tables(pg_settings.catalog_name, namespace),
    )


def test_the_catalog_lives_in_postgresql(pg_settings: Settings) -> None:
    conf = spark_catalog_conf(pg_settings)
    assert conf["spark.sql.catalog.ohlcv.uri"].startswith(
        f"jdbc:postgresql://127.0.0.1:{port(15432)}/"
    )
    props = pyiceberg_catalog_properties(pg_settings)
    assert props["uri"].startswith("postgresql+psycopg2://ohlcv:")
    assert "ohlcv-test-password" not in stack.status(pg_settings).describe()


@pytest.mark.parametrize(
    "oracle_test",
    [
        test_candles.test_every_timeframe_equals_oracle_through_late_trades_and_reruns,
        test_candles.test_batch_run_replaces_only_its_windows,
        test_candles.test_backfill_in_chunks_equals_oracle,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_core_oracle_tests_pass_on_postgresql(
    oracle_test: object, pg_spark: SparkSession, pg: tuple[Settings, Catalog, Tables]
) -> None:
    settings, catalog, tables = pg
    # (the backfill runs the one backfill, which needs the settings of these tables)
    backfill = oracle_test is test_candles.test_backfill_in_chunks_equals_oracle
    oracle_test(pg_spark, catalog, tables, *([settings] if backfill else []))  # type: ignore[operator]


def test_a_flow_runs_on_the_postgresql_catalog(
    prefect: None,
    pg_spark: SparkSession,
    pg: tuple[Settings, Catalog, Tables],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, catalog, tables = pg
    now = START + timedelta(hours=1)
    trades = random_trades(random.Random(81), START, now, 400, first_id=1)
    deliver(catalog, tables, trades, now=now)
    assert settings.catalog_password is not None and settings.catalog_uri is not None
    export_settings(monkeypatch, settings, gx_dir=str(tmp_path / "gx"))

    assert FLOWS["5m"](at=now).published
    tf = TIMEFRAMES["5m"]
    assert not diff(expected_candles(trades, tf), stored_candles(pg_spark, tables.candles(tf)))
