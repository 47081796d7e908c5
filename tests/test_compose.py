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

from infra.artifacts import ICEBERG_SPARK_RUNTIME
from infra.stack import ABANDONED_OPERATIONS_CONF
from settings import Settings

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
    assert catalog == settings.spark_catalog_conf()
    assert server["spark.sql.defaultCatalog"] == settings.catalog_name
    assert server["spark.connect.grpc.binding.address"] == "127.0.0.1"
    # A dead client's operations end on the cluster as on the local stack
    assert ABANDONED_OPERATIONS_CONF.items() <= server.items()
    # The token reaches the server through its environment and the client through SPARK_REMOTE
    token = _example_env()["OHLCV_CONNECT_TOKEN"]
    assert services["spark-connect"]["environment"]["SPARK_CONNECT_AUTHENTICATE_TOKEN"] == token
    assert settings.remote == f"sc://localhost:15002/;token={token}"
    assert services["ohlcv"]["network_mode"] == "service:spark-connect"


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
    assert f"org.apache.iceberg:iceberg-aws-bundle:{runtime.version}" in packages.split(",")


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
