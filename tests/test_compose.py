"""The production compose file: pinned, health-checked, and configured through the same settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import object_store, rest_catalog
from infra.artifacts import ICEBERG_AWS_BUNDLE, ICEBERG_SPARK_RUNTIME, server_artifacts
from infra.catalog_properties import spark_catalog_conf
from infra.spark_server import ABANDONED_OPERATIONS_CONF, server_conf
from settings import CatalogType, Settings, StorageType

COMPOSE_DIR = Path(__file__).resolve().parent.parent / "infra" / "compose"
_VARIABLE = re.compile(r"\$\{(\w+)(?::\?[^}]*)?\}")


def _example_env() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (COMPOSE_DIR / "example.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {k: v for k, v in pairs}


def _compose() -> dict[str, Any]:
    """compose.yaml with ${VAR} interpolated from example.env, as `docker compose` would."""
    env = _example_env()
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    return dict(yaml.safe_load(_VARIABLE.sub(lambda m: env[m.group(1)], text)))


def _conf(command: list[str]) -> dict[str, str]:
    pairs = [command[i + 1] for i, arg in enumerate(command) if arg == "--conf"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_client_settings_are_fields_the_code_reads_and_match_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose()["services"]
    env = {k: str(v) for k, v in services["ohlcv"]["environment"].items()}
    known = {f"OHLCV_{name.upper()}" for name in Settings.model_fields} | {"SPARK_REMOTE"}
    ours = {k for k in env if k.startswith("OHLCV_") or k == "SPARK_REMOTE"}
    assert ours <= known, f"settings nobody reads: {sorted(ours - known)}"

    for key in list(known):
        monkeypatch.delenv(key, raising=False)
    for key in ours:
        monkeypatch.setenv(key, env[key])
    settings = Settings()
    assert settings.catalog_type.value == "rest" and not settings.is_local
    server = _conf(services["spark-connect"]["command"])
    catalog = {k: v for k, v in server.items() if k.startswith("spark.sql.catalog.")}
    assert catalog == spark_catalog_conf(settings)
    assert server["spark.sql.defaultCatalog"] == settings.catalog_name
    assert server["spark.connect.grpc.binding.address"] == "127.0.0.1"
    # A dead client's operations end on the cluster as on the local stack
    assert ABANDONED_OPERATIONS_CONF.items() <= server.items()
    # The token reaches the server through its environment and the client through SPARK_REMOTE
    token = _example_env()["OHLCV_CONNECT_TOKEN"]
    assert services["spark-connect"]["environment"]["SPARK_CONNECT_AUTHENTICATE_TOKEN"] == token
    assert settings.remote == f"sc://localhost:15002/;token={token}"
    assert services["ohlcv"]["network_mode"] == "service:spark-connect"


def test_the_tested_local_rest_and_s3_shape_gives_the_server_the_compose_settings(
    tmp_path: Path,
) -> None:
    """The shape tests/test_rest_s3.py runs (a local REST catalog and S3 server) derives the
    same catalog and S3 settings for the server as the compose file holds; only where the
    servers are differs, and the local REST catalog's bearer token (the compose file's REST
    fixture image checks no credentials)."""
    server = _conf(_compose()["services"]["spark-connect"]["command"])
    compose = {k: v for k, v in server.items() if k.startswith("spark.sql.catalog.")}
    local = Settings(
        data_dir=tmp_path,
        catalog_type=CatalogType.REST,
        storage=StorageType.S3,
        spark_remote=None,
    )
    object_store.ensure_credentials(local)  # as `stack up` does first
    rest_catalog.ensure_token(local)
    derived = server_conf(local)
    ours = {k: v for k, v in derived.items() if k.startswith("spark.sql.catalog.")}
    token_key = "spark.sql.catalog.ohlcv.token"
    assert ours.pop(token_key) == local.rest_token()
    assert set(ours) == set(compose)
    where = {"uri", "s3.endpoint", "s3.access-key-id", "s3.secret-access-key"}
    for key, value in compose.items():
        if key.removeprefix("spark.sql.catalog.ohlcv.") not in where:
            assert ours[key] == value, key
    assert derived["spark.sql.defaultCatalog"] == server["spark.sql.defaultCatalog"]
    # The server of the local shape gets the AWS SDK as compose's does (--packages there)
    assert ICEBERG_AWS_BUNDLE in server_artifacts(s3=local.uses_s3)
    assert ICEBERG_AWS_BUNDLE not in server_artifacts(s3=Settings(spark_remote=None).uses_s3)


def test_images_are_pinned_to_the_versions_the_code_uses_and_health_checked() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        image = service.get("image")
        if image is not None:
            assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned {image}"
        if name != "create-bucket":  # a one-shot job
            assert "healthcheck" in service, f"{name} has no health check"
    spark_minor = ".".join(version("pyspark").split(".")[:2])
    assert services["spark-connect"]["image"].startswith(f"apache/spark:{spark_minor}.")
    prefect_image = services["prefect-server"]["image"]
    assert prefect_image.startswith(f"prefecthq/prefect:{version('prefect')}-")
    packages = services["spark-connect"]["command"][
        services["spark-connect"]["command"].index("--packages") + 1
    ]
    runtime = ICEBERG_SPARK_RUNTIME
    assert runtime.coordinate in packages.split(",")
    assert ICEBERG_AWS_BUNDLE.coordinate in packages.split(",")


def test_no_secret_is_written_into_the_compose_file() -> None:
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    for value in _example_env().values():
        assert value not in text
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET|TOKEN)[A-Z_]*:", line) and "${" not in line:
            pytest.fail(f"a secret without interpolation: {line.strip()}")


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="no docker compose client on this machine",
)
def test_docker_compose_accepts_the_file() -> None:
    subprocess.run(
        [
            "docker",
            "compose",
            "--env-file",
            str(COMPOSE_DIR / "example.env"),
            "-f",
            str(COMPOSE_DIR / "compose.yaml"),
            "config",
            "--quiet",
        ],
        check=True,
        timeout=60,
    )
