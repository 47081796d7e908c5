"""The local Iceberg REST catalog of the production-shaped stack (``OHLCV_CATALOG_TYPE=rest``
without ``OHLCV_CATALOG_URI``).

Iceberg's own REST server classes over a JDBC catalog in the data dir (SQLite), with S3FileIO
for table metadata; ``RestCatalogServer.java`` beside this module says why it is not Iceberg's
``RESTCatalogServer`` fixture as is (it binds every interface, has no auth and logs secrets).
Clients authenticate with a bearer token, generated per data directory unless
``OHLCV_CATALOG_TOKEN`` sets one; requests without it are refused with 401. The server gets
the token and the S3 credentials from a properties file of mode 600, never its command line.
"""

from __future__ import annotations

import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from infra import object_store
from infra.artifacts import REST_CATALOG_JARS, ensure_jar_set, java_executable
from infra.catalog_properties import iceberg_io_properties
from infra.local_servers import HOST, JVM_OPTIONS, Launch, LocalServer, write_private
from infra.processes import StackError, StackStatus
from settings import Settings

LAUNCHER = Path(__file__).with_name("RestCatalogServer.java")
SERVER = LocalServer("rest-catalog", "local REST catalog", "OHLCV_REST_PORT")


def url(settings: Settings) -> str:
    return f"http://{HOST}:{settings.rest_port}"


def backend_path(settings: Settings) -> Path:
    """The SQLite file of the JDBC catalog behind the REST server."""
    return settings.data_dir.resolve() / "rest-catalog.db"


def ensure_token(settings: Settings) -> str:
    """The bearer token: the setting, else the data directory's own (mode 600)."""
    token = settings.rest_token()
    if token:
        return token
    token = secrets.token_urlsafe(32)
    write_private(settings.rest_token_file, token)
    return token


def answers(settings: Settings, token: str | None) -> int | None:
    """The HTTP status of ``GET /v1/config`` with ``token`` (None: no answer at all)."""
    request = urllib.request.Request(f"{url(settings)}/v1/config")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        e.close()  # an unclosed error response leaks its socket
        return e.code
    except OSError:
        return None


def _healthy(settings: Settings, token: str) -> bool:
    """The catalog serves its config with the token and refuses a request without it."""
    return answers(settings, token) == 200 and answers(settings, None) == 401


def backend_properties(settings: Settings) -> dict[str, str]:
    """Catalog properties of the JDBC catalog behind the REST server (secrets included)."""
    return {
        "catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
        "uri": f"jdbc:sqlite:{backend_path(settings)}",
        "jdbc.schema-version": "V1",
        # Parallel commits from Spark and PyIceberg queue instead of failing with SQLITE_BUSY.
        "jdbc.busy_timeout": "30000",
        "jdbc.journal_mode": "WAL",
        "warehouse": settings.warehouse_location,
        **iceberg_io_properties(settings),
    }


def up(settings: Settings) -> StackStatus:
    """Start the local REST catalog (or reuse a running one); its storage must be up first."""
    if not settings.uses_s3:
        raise StackError(
            "the local REST catalog keeps its tables on S3: set OHLCV_STORAGE=s3 (a local S3 "
            "server) or OHLCV_S3_ENDPOINT, or use OHLCV_CATALOG_TYPE=sqlite"
        )
    SERVER.refuse_a_taken_port(settings, settings.rest_port)
    token = ensure_token(settings)
    jars = ensure_jar_set(settings.jar_cache_dir, REST_CATALOG_JARS)
    config = {
        "rest.host": HOST,
        "rest.port": str(settings.rest_port),
        "rest.token": token,
        **{f"catalog.{k}": v for k, v in backend_properties(settings).items()},
    }
    cmd = [
        java_executable(),
        *JVM_OPTIONS,
        "-cp",
        ":".join(str(j) for j in jars),
        str(LAUNCHER),
        str(SERVER.config_file(settings)),
    ]
    SERVER.write_config(settings, config)
    launch = Launch(cmd, {**os.environ, **(object_store.SDK_ENV if settings.local_s3 else {})})
    SERVER.start(settings, settings.rest_port, lambda: launch, lambda: _healthy(settings, token))
    return status(settings)


def status(settings: Settings) -> StackStatus:
    return SERVER.status(settings, url(settings))


def down(settings: Settings) -> StackStatus:
    SERVER.stop(settings)
    return status(settings)
