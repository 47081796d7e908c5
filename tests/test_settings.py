"""Settings: one typed place for configuration; catalog code paths for SQLite, PostgreSQL, REST."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.catalog_properties import pyiceberg_catalog_properties, spark_catalog_conf
from settings import CatalogType, Settings, StorageType


def test_defaults_are_the_embedded_stack(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, spark_remote=None)
    assert s.remote == "sc://localhost:15002"
    assert s.is_local
    conf = spark_catalog_conf(s)
    assert conf["spark.sql.catalog.ohlcv.type"] == "jdbc"
    assert conf["spark.sql.catalog.ohlcv.uri"] == f"jdbc:sqlite:{tmp_path.resolve()}/catalog.db"
    assert conf["spark.sql.catalog.ohlcv.jdbc.init-catalog-tables"] == "false"
    props = pyiceberg_catalog_properties(s)
    assert props["type"] == "sql" and props["uri"].startswith(f"sqlite:///{tmp_path.resolve()}")


def test_spark_remote_comes_from_the_standard_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARK_REMOTE", "sc://spark.example:443/;token=t;use_ssl=true")
    s = Settings()
    assert s.remote == "sc://spark.example:443/;token=t;use_ssl=true"
    assert not s.is_local


def test_postgres_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OHLCV_CATALOG_TYPE", "postgres")
    monkeypatch.setenv("OHLCV_CATALOG_URI", "jdbc:postgresql://db:5432/iceberg")
    monkeypatch.setenv("OHLCV_CATALOG_USER", "ohlcv")
    monkeypatch.setenv("OHLCV_CATALOG_PASSWORD", "p@ss")
    monkeypatch.setenv("OHLCV_WAREHOUSE", "s3://bucket/warehouse")
    s = Settings()
    assert s.catalog_type is CatalogType.POSTGRES
    conf = spark_catalog_conf(s)
    assert conf["spark.sql.catalog.ohlcv.uri"] == "jdbc:postgresql://db:5432/iceberg"
    assert conf["spark.sql.catalog.ohlcv.jdbc.user"] == "ohlcv"
    assert conf["spark.sql.catalog.ohlcv.warehouse"] == "s3://bucket/warehouse"
    assert (
        pyiceberg_catalog_properties(s)["uri"]
        == "postgresql+psycopg2://ohlcv:p%40ss@db:5432/iceberg"
    )
    assert "p@ss" not in repr(s)


def test_rest_catalog_without_a_uri_is_the_local_one(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, catalog_type=CatalogType.REST, rest_port=18181)
    assert s.local_rest and not s.local_s3
    assert spark_catalog_conf(s)["spark.sql.catalog.ohlcv.uri"] == "http://127.0.0.1:18181"
    assert "spark.sql.catalog.ohlcv.token" not in spark_catalog_conf(s)  # none generated yet
    s.rest_token_file.parent.mkdir(parents=True)
    s.rest_token_file.write_text("generated")
    assert spark_catalog_conf(s)["spark.sql.catalog.ohlcv.token"] == "generated"
    assert pyiceberg_catalog_properties(s)["token"] == "generated"
    s = Settings(catalog_type=CatalogType.REST, catalog_uri="http://rest:8181")
    assert not s.local_rest
    assert spark_catalog_conf(s)["spark.sql.catalog.ohlcv.type"] == "rest"
    assert pyiceberg_catalog_properties(s) == {
        "warehouse": s.warehouse_location,
        "type": "rest",
        "uri": "http://rest:8181",
    }


def test_s3_storage_without_an_endpoint_is_the_local_server(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, storage=StorageType.S3, s3_port=19000)
    assert s.local_s3 and s.uses_s3 and s.warehouse_location == "s3://warehouse/"
    assert spark_catalog_conf(s)["spark.sql.catalog.ohlcv.s3.endpoint"] == "http://127.0.0.1:19000"
    s.s3_credentials_file.parent.mkdir(parents=True)
    s.s3_credentials_file.write_text('{"access_key_id": "id", "secret_access_key": "sec"}')
    props = pyiceberg_catalog_properties(s)
    assert (props["s3.access-key-id"], props["s3.secret-access-key"]) == ("id", "sec")
    assert "sec" in s.secrets()
    # An endpoint of one's own is used as it is, with its own credentials, never the files'
    own = Settings(data_dir=tmp_path, s3_endpoint="http://minio:9000", warehouse="s3://w/")
    assert own.uses_s3 and not own.local_s3 and own.s3_credentials() is None
    assert spark_catalog_conf(own)["spark.sql.catalog.ohlcv.s3.endpoint"] == "http://minio:9000"


def test_identifiers_are_checked() -> None:
    with pytest.raises(ValidationError, match="not a plain identifier"):
        Settings(namespace="market; DROP TABLE x")
