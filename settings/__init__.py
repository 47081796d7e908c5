"""The one place that reads the environment.

Every value has a localhost default, so the embedded stack works with no configuration. Pointing
the same code at a cluster means setting ``SPARK_REMOTE`` and the ``OHLCV_CATALOG_*`` values.
"""

from __future__ import annotations

import json
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from settings.landing import LandingSettings
from settings.operations import OperationsSettings
from settings.validation import ValidationSettings

if TYPE_CHECKING:
    from core.calendars import Market

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CatalogType(StrEnum):
    """Which Iceberg catalog Spark and PyIceberg share."""

    SQLITE = "sqlite"
    POSTGRES = "postgres"
    REST = "rest"


class StorageType(StrEnum):
    """Where the warehouse lives when no OHLCV_WAREHOUSE names it."""

    LOCAL = "local"
    S3 = "s3"


LOCAL_S3_BUCKET = "warehouse"
"""The bucket of the local S3 server (the same name the compose file's object store uses)."""


class Settings(OperationsSettings, ValidationSettings, LandingSettings):
    """Typed settings, read from ``OHLCV_*`` variables (and the standard ``SPARK_REMOTE``);
    those of running it the Prefect way (history, automations) in :mod:`settings.operations`,
    of validation in :mod:`settings.validation`, of the landing zone in :mod:`settings.landing`."""

    model_config = SettingsConfigDict(env_prefix="OHLCV_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(
        default=Path(".ohlcv"),
        description="Local stack state: catalog file, warehouse, server logs and pid file.",
    )
    jar_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "ohlcv" / "jars",
        description="Where pinned JVM artifacts are cached, outside the repository.",
    )
    web_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "ohlcv" / "web",
        description="Where the pinned front-end packages of the data docs are cached.",
    )

    # Spark Connect
    spark_remote: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SPARK_REMOTE", "OHLCV_SPARK_REMOTE"),
        description="sc://host:port/;token=...;use_ssl=true of a Spark Connect server (the "
        "client sends a token in plaintext only to the host localhost: any other host needs "
        "use_ssl=true). Unset: the local embedded server.",
    )
    connect_token: SecretStr | None = Field(
        default=None,
        description="Token the local server requires. Unset: one is generated per data "
        "directory (<data_dir>/stack/token, mode 600).",
    )
    connect_host: str = Field(
        default="127.0.0.1",
        description="Address the local Spark Connect server binds to (loopback: only this "
        "machine can reach it).",
    )
    connect_port: int = Field(
        default=15002, ge=1, le=65535, description="Port of the local Spark Connect server."
    )
    driver_memory: str = Field(
        default="4g",
        description="Memory of the local Spark Connect server's driver (spark-submit's "
        "--driver-memory), e.g. 4g.",
    )
    server_java_options: str = Field(
        default="",
        description="More JVM options of the local Spark Connect server and of a local "
        "cluster's executors, e.g. -XX:+UseSerialGC for a server on little data, and "
        "-XX:TieredStopAtLevel=1 too for one that lives briefly (the test suite's: a fresh "
        "server's CPU about halved). Empty: the JVM's defaults, best for large backfills. "
        "Spark's launcher adds -XX:+IgnoreUnrecognizedVMOptions, so a mistyped -XX option is "
        "ignored, not refused: check the server's command line (ps) after a change.",
    )
    server_log_level: Literal["error", "warn", "info", "debug"] = Field(
        default="warn",
        description="Log level of the local Spark Connect server (its log: stack/server.log, "
        "moved to server.log.1 past 20 MB at the next start).",
    )
    local_cores: int = Field(
        default=0,
        ge=0,
        description="Cores the local server runs Spark on in local mode (local[N]); 0: all "
        "cores of this machine. Not used with OHLCV_WORKERS.",
    )
    shuffle_partitions: int = Field(
        default=4,
        ge=1,
        description="spark.sql.shuffle.partitions of the local server: partitions of every "
        "aggregation and join (Spark's default of 200 suits a cluster, not one machine).",
    )
    server_start_timeout_s: float = Field(
        default=180.0,
        gt=0,
        description="How long `stack up` waits for each local JVM server (Spark Connect, the "
        "standalone master, the S3 server, the REST catalog) to become healthy before it "
        "fails with the last lines of that server's log.",
    )
    connect_retry_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a Spark Connect call retries an unreachable server before it "
        "fails (the client's own default is over ten minutes).",
    )
    ui_port: int = Field(
        default=4040, ge=1, le=65535, description="Port of the local server's Spark UI."
    )
    workers: int = Field(
        default=0,
        ge=0,
        description="0: the server runs Spark in local mode. N: `stack up` also starts a "
        "standalone master and N worker processes on loopback, and the server uses them.",
    )
    worker_cores: int = Field(
        default=1, ge=1, description="Cores of each standalone worker (OHLCV_WORKERS > 0)."
    )
    worker_memory: str = Field(
        default="2g", description="Memory of each standalone worker (OHLCV_WORKERS > 0)."
    )
    master_port: int = Field(
        default=7077,
        ge=1,
        le=65535,
        description="Port of the standalone master on 127.0.0.1 (OHLCV_WORKERS > 0).",
    )
    master_ui_port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        description="Port of the standalone master's web UI on 127.0.0.1 (OHLCV_WORKERS > 0).",
    )
    prefect_port: int = Field(
        default=4200,
        ge=1,
        le=65535,
        description="Port of the local Prefect server `stack up` starts on 127.0.0.1 (API and "
        "UI), unless PREFECT_API_URL names another one.",
    )
    prefect_start_timeout_s: float = Field(
        default=180.0,
        gt=0,
        description="How long `stack up` waits for the local Prefect server to answer before "
        "it fails, naming the server's log.",
    )
    prefect_retention_days: float = Field(
        default=14,
        ge=1,
        description="Flow runs (task runs, logs, artifacts) kept, in days after they end: the "
        "maintenance flow deletes older ones through the Prefect API (any Prefect server), and "
        "the local server's database vacuum does too; events after at most 7 days.",
    )

    # Iceberg catalog
    catalog_type: CatalogType = Field(
        default=CatalogType.SQLITE,
        description="The Iceberg catalog Spark and PyIceberg share: sqlite (a JDBC catalog in "
        "<data_dir>/catalog.db), postgres (a JDBC catalog in PostgreSQL) or rest (an Iceberg "
        "REST catalog; without OHLCV_CATALOG_URI, `stack up` starts a local one).",
    )
    catalog_name: str = Field(
        default="ohlcv",
        description="Spark's name of the catalog (the first part of ohlcv.market.trades); "
        "letters, digits and underscores.",
    )
    namespace: str = Field(
        default="market",
        description="Namespace of the tables in the catalog; letters, digits and underscores.",
    )
    catalog_uri: str | None = Field(
        default=None,
        description="JDBC URL (postgres: jdbc:postgresql://host:5432/db) or REST URL. "
        "Unset with sqlite: <data_dir>/catalog.db.",
    )
    catalog_user: str | None = Field(
        default=None, description="User of the JDBC catalog (postgres)."
    )
    catalog_password: SecretStr | None = Field(
        default=None,
        description="Password of the JDBC catalog (postgres); handed to the local server in "
        "a private file, never on its command line.",
    )
    catalog_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the REST catalog. Unset with the local REST catalog: one "
        "is generated per data directory (<data_dir>/stack/rest-token, mode 600).",
    )
    rest_port: int = Field(
        default=8181,
        ge=1,
        le=65535,
        description="Port of the local REST catalog `stack up` starts on 127.0.0.1 when "
        "OHLCV_CATALOG_TYPE=rest and OHLCV_CATALOG_URI is unset.",
    )
    storage: StorageType = Field(
        default=StorageType.LOCAL,
        description="local: a warehouse directory. s3: S3-compatible object storage; without "
        "OHLCV_S3_ENDPOINT, `stack up` starts a local S3 server (bucket 'warehouse').",
    )
    s3_port: int = Field(
        default=9000, ge=1, le=65535, description="Port of the local S3 server on 127.0.0.1."
    )
    warehouse: str | None = Field(
        default=None, description="Warehouse location. Unset: file:<data_dir>/warehouse."
    )
    # S3-compatible object storage for an s3:// warehouse (Iceberg's S3FileIO on both sides)
    s3_endpoint: str | None = Field(
        default=None,
        description="URL of S3-compatible object storage for an s3:// warehouse, e.g. "
        "http://minio:9000. Unset with OHLCV_STORAGE=s3: the local S3 server.",
    )
    s3_access_key_id: str | None = Field(
        default=None,
        description="S3 access key id. Unset with the local S3 server: a pair is generated "
        "per data directory (<data_dir>/stack/s3-credentials.json, mode 600).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="S3 secret access key (see OHLCV_S3_ACCESS_KEY_ID)."
    )
    s3_region: str = Field(default="us-east-1", description="S3 region of the warehouse.")
    s3_path_style_access: bool = Field(
        default=True,
        description="Path-style S3 URLs (endpoint/bucket/key), as MinIO and the local S3 "
        "server expect.",
    )

    # Market calendars and gaps (core/calendars.py; docs/calendars-and-gaps.md)
    calendars: str | None = Field(
        default=None,
        description="Instrument time zones and sessions: a JSON list, or the path of a JSON "
        'file holding one, e.g. [{"exchange": "nyse", "zone": "America/New_York", '
        '"session": "09:30-16:00"}]. Unset: every instrument is UTC, no session. See '
        "docs/calendars-and-gaps.md.",
    )
    gap_policy: str = Field(
        default="",
        description="Per timeframe, what a window without trades becomes: e.g. "
        "'1m=previous_close,5m=previous_close'. Unnamed timeframes: none (no candle).",
    )

    # Long life: bounded runs and table maintenance
    max_new_trades_per_run: int = Field(
        default=20_000_000,
        ge=1,
        description="A run processes at most this many newly appended trades; a larger "
        "catch-up proceeds in bounded steps over the next runs.",
    )
    snapshot_retention_h: float = Field(
        default=48.0,
        gt=0,
        description="Maintenance expires snapshots older than this many hours; as_of reads "
        "reach back this far.",
    )
    snapshots_retain_last: int = Field(
        default=20, ge=1, description="Maintenance always keeps this many newest snapshots."
    )
    orphan_file_age_h: float = Field(
        default=72.0,
        ge=24,
        description="Maintenance removes unreferenced files older than this (>= 24 h: a "
        "running writer's files look orphaned until it commits).",
    )

    # Orchestration (Prefect task defaults; tests shorten them)
    generate_retries: int = Field(
        default=2, ge=0, description="Retries of a flow run's generate_candles task."
    )
    generate_retry_delay_s: float = Field(
        default=60.0, ge=0, description="Seconds between generate_candles retries."
    )
    generate_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Time limit of one generate_candles attempt: its Spark operations are "
        "interrupted on the server (interruptTag) when it runs out.",
    )
    validate_retries: int = Field(
        default=1,
        ge=0,
        description="Retries of a flow run's validate_candles task (never for a failed "
        "validation: the data would fail again).",
    )
    validate_retry_delay_s: float = Field(
        default=30.0, ge=0, description="Seconds between validate_candles retries."
    )

    @field_validator("calendars")
    @classmethod
    def _calendars(cls, value: str | None) -> str | None:
        from core.calendars import parse_calendars

        parse_calendars(value)  # a bad declaration fails when the settings load, naming it
        return value

    @field_validator("gap_policy")
    @classmethod
    def _gap_policy(cls, value: str) -> str:
        from core.calendars import parse_gap_policies

        parse_gap_policies(value)
        return value

    @field_validator("catalog_name", "namespace")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(
                f"{value!r} is not a plain identifier: use letters, digits and underscores"
            )
        return value

    # Derived values -------------------------------------------------------------------------

    def market(self) -> Market:
        """The instruments' calendars and the timeframes' gap policies."""
        from core.calendars import market

        return market(self.calendars, self.gap_policy)

    @property
    def stack_dir(self) -> Path:
        return self.data_dir.resolve() / "stack"

    @property
    def gx_root(self) -> Path:
        return (self.gx_dir or self.data_dir).resolve()

    @property
    def token_file(self) -> Path:
        return self.stack_dir / "token"

    def local_token(self) -> str | None:
        """The token of the local server: the setting, else the data directory's token file."""
        if self.connect_token:
            return self.connect_token.get_secret_value()
        try:
            return self.token_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def remote(self) -> str:
        """The Spark Connect URL the client uses (it may hold a token: see ``redact``)."""
        if self.spark_remote:
            return self.spark_remote
        # The Python client sends a token over plaintext only to the literal host "localhost".
        token = self.local_token()
        suffix = f"/;token={token}" if token else ""
        return f"sc://localhost:{self.connect_port}{suffix}"

    @property
    def is_local(self) -> bool:
        """True when the client talks to the embedded server this project starts."""
        return self.spark_remote is None

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir.resolve() / "catalog.db"

    @property
    def warehouse_location(self) -> str:
        if self.warehouse:
            return self.warehouse
        if self.storage is StorageType.S3:
            return f"s3://{LOCAL_S3_BUCKET}/"
        return (self.data_dir.resolve() / "warehouse").as_uri()

    # The local REST catalog and S3 server (infra/rest_catalog.py, infra/object_store.py) -----

    @property
    def uses_s3(self) -> bool:
        """Whether the warehouse is on S3-compatible storage (the local server or another)."""
        return self.storage is StorageType.S3 or self.s3_endpoint is not None

    @property
    def local_s3(self) -> bool:
        """True when `stack up` runs the S3 server (S3 storage without an endpoint of its own)."""
        return self.storage is StorageType.S3 and self.s3_endpoint is None

    @property
    def local_rest(self) -> bool:
        """True when `stack up` runs the REST catalog (REST without a catalog URL)."""
        return self.catalog_type is CatalogType.REST and self.catalog_uri is None

    @property
    def s3_endpoint_url(self) -> str:
        return self.s3_endpoint or f"http://127.0.0.1:{self.s3_port}"

    @property
    def s3_credentials_file(self) -> Path:
        return self.stack_dir / "s3-credentials.json"

    @property
    def rest_token_file(self) -> Path:
        return self.stack_dir / "rest-token"

    def s3_credentials(self) -> tuple[str, str] | None:
        """(access key id, secret): the settings, else the local S3 server's generated pair."""
        if self.s3_access_key_id and self.s3_secret_access_key:
            return self.s3_access_key_id, self.s3_secret_access_key.get_secret_value()
        if not self.local_s3:
            return None
        try:
            pair = json.loads(self.s3_credentials_file.read_text())
        except FileNotFoundError:
            return None
        return str(pair["access_key_id"]), str(pair["secret_access_key"])

    def rest_token(self) -> str | None:
        """The REST catalog's bearer token: the setting, else the local catalog's own."""
        if self.catalog_token:
            return self.catalog_token.get_secret_value()
        if not self.local_rest:
            return None
        try:
            return self.rest_token_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def secrets(self) -> list[str]:
        """Every secret value these settings hold or lead to (for leak checks and redaction)."""
        values = [self.local_token(), self.rest_token()]
        if self.catalog_password:
            values.append(self.catalog_password.get_secret_value())
        credentials = self.s3_credentials()
        if credentials:
            values.append(credentials[1])
        return [v for v in values if v]


def redact(remote: str) -> str:
    """A Spark Connect URL without its parameters, so a token never reaches logs or errors."""
    return remote.split(";", 1)[0].rstrip("/")


def quiet_third_parties() -> None:
    """Keep GX and Prefect from phoning home (a user's own value wins); call before importing:
    they read these when they are imported, and this is the one place that sets them."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
