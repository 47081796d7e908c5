"""The production shape on one machine: an Iceberg REST catalog and S3 object storage, for real.

`stack.up` starts the local S3 server (S3Proxy) and REST catalog (Iceberg's REST server
classes) beside the Spark Connect server, as `ohlcv stack up --catalog rest --storage s3`
does; the core oracle tests, an ingest with rejects, a full write-audit-publish flow (a failed
validation included) and the data docs then run against them. Spark writes through Iceberg's
S3FileIO, PyIceberg through its own S3 client, both signed with the generated credentials.
"""

from __future__ import annotations

import random
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pyarrow.fs as pafs
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.states import State
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import UnauthorizedError
from pyspark.sql import SparkSession

from core.tables import Tables, ensure_tables
from core.timeframes import TIMEFRAMES
from expectations.data_docs import build_data_docs
from expectations.validation import ValidationFailed
from flows import pipeline
from flows.candle_flows import FLOWS
from infra import object_store, rest_catalog, stack
from infra.catalog import open_catalog
from infra.catalog_properties import pyiceberg_catalog_properties, spark_catalog_conf
from infra.session import close, connect
from settings import LOCAL_S3_BUCKET, CatalogType, Settings, StorageType
from spark_jobs import jobs, snapshots, wap
from tests import test_candles, test_ingest
from tests.conftest import export_settings, port
from tests.helpers import START, deliver, random_trades
from tests.oracle import diff, expected_candles, stored_candles

CONNECT_PORT, UI_PORT, S3_PORT, REST_PORT = port(15016), port(14056), port(15017), port(15018)
FIVE_MINUTES = TIMEFRAMES["5m"]


@pytest.fixture(scope="module")
def rs_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("rest-s3"),
        connect_port=CONNECT_PORT,
        ui_port=UI_PORT,
        s3_port=S3_PORT,
        rest_port=REST_PORT,
        catalog_type=CatalogType.REST,
        storage=StorageType.S3,
        spark_remote=None,
    )
    try:
        stack.up(settings)  # the S3 server and REST catalog first, then Spark Connect
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture(scope="module")
def rs_spark(rs_settings: Settings) -> Iterator[SparkSession]:
    spark = connect(rs_settings)
    yield spark
    close(spark)


@pytest.fixture
def rs(rs_settings: Settings) -> tuple[Settings, Catalog, Tables]:
    namespace = f"r_{uuid.uuid4().hex[:12]}"
    catalog = open_catalog(rs_settings)
    ensure_tables(catalog, namespace)
    return (
        rs_settings.model_copy(update={"namespace": namespace}),
        catalog,
        Tables(rs_settings.catalog_name, namespace),
    )


def _s3_files(settings: Settings, namespace: str) -> list[Path]:
    """Files the local S3 server holds for a namespace (its buckets are directories)."""
    bucket = object_store.blob_dir(settings) / LOCAL_S3_BUCKET
    return [
        p
        for p in bucket.rglob("*")
        if p.is_file() and any(part.startswith(namespace) for part in p.parts)
    ]


def test_a_taken_port_fails_in_one_line_naming_it_and_its_setting(tmp_path: Path) -> None:
    with socket.socket() as s3_holder, socket.socket() as rest_holder:
        for holder in (s3_holder, rest_holder):
            holder.bind(("127.0.0.1", 0))
            holder.listen()
        s3_port, rest_port = s3_holder.getsockname()[1], rest_holder.getsockname()[1]
        settings = Settings(
            data_dir=tmp_path,
            catalog_type=CatalogType.REST,
            storage=StorageType.S3,
            s3_port=s3_port,
            rest_port=rest_port,
            spark_remote=None,
        )
        with pytest.raises(stack.StackError, match=rf"port {s3_port} .*OHLCV_S3_PORT"):
            object_store.up(settings)
        with pytest.raises(stack.StackError, match=rf"port {rest_port} .*OHLCV_REST_PORT"):
            rest_catalog.up(settings)


def test_the_stack_runs_rest_and_s3_on_loopback(rs_settings: Settings) -> None:
    conf = spark_catalog_conf(rs_settings)
    assert conf["spark.sql.catalog.ohlcv.type"] == "rest"
    assert conf["spark.sql.catalog.ohlcv.uri"] == f"http://127.0.0.1:{REST_PORT}"
    assert conf["spark.sql.catalog.ohlcv.warehouse"] == "s3://warehouse/"
    assert conf["spark.sql.catalog.ohlcv.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert conf["spark.sql.catalog.ohlcv.s3.endpoint"] == f"http://127.0.0.1:{S3_PORT}"
    for status in (object_store.status(rs_settings), rest_catalog.status(rs_settings)):
        assert status.running, status.describe()
    # Files that hold secrets are private to this user
    for private in (
        rs_settings.s3_credentials_file,
        rs_settings.rest_token_file,
        object_store.SERVER.config_file(rs_settings),
        rest_catalog.SERVER.config_file(rs_settings),
        rs_settings.stack_dir / "server-secrets.conf",
    ):
        assert private.stat().st_mode & 0o077 == 0, private


def test_rest_catalog_and_s3_refuse_requests_without_valid_credentials(
    rs: tuple[Settings, Catalog, Tables],
) -> None:
    rs_settings = rs[0]
    token = rs_settings.rest_token()
    assert token
    # REST: no token, a wrong token -> 401; the right one -> 200
    assert rest_catalog.answers(rs_settings, None) == 401
    assert rest_catalog.answers(rs_settings, token[:-1] + ("x" if token[-1] != "x" else "y")) == 401
    assert rest_catalog.answers(rs_settings, token) == 200
    props = pyiceberg_catalog_properties(rs_settings)
    with pytest.raises(UnauthorizedError):
        load_catalog("wrong", **{**props, "token": "not-the-token"}).list_namespaces()

    # S3: unsigned requests are refused (403): listing the bucket, reading an object the
    # catalog wrote (this test's tables' metadata), writing one
    endpoint = rs_settings.s3_endpoint_url
    stored = _s3_files(rs_settings, rs[2].namespace)[0]
    key = stored.relative_to(object_store.blob_dir(rs_settings)).as_posix()
    for method, path in (("GET", f"{LOCAL_S3_BUCKET}/"), ("GET", key), ("PUT", key)):
        request = urllib.request.Request(f"{endpoint}/{path}", method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        refused.value.close()
        assert refused.value.code == 403, (method, path)
    credentials = rs_settings.s3_credentials()
    assert credentials
    key_id, secret = credentials

    def s3(secret_key: str) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=key_id,
            secret_key=secret_key,
            endpoint_override=endpoint,
            scheme="http",
            region=rs_settings.s3_region,
        )

    with pytest.raises(OSError, match=r"(?i)403|denied|signature|forbidden"):
        s3(secret + "x").open_input_stream(key).read()
    assert s3(secret).open_input_stream(key).read() == stored.read_bytes()


# The same core oracle tests as on SQLite and PostgreSQL. The first is the slowest here (every
# Iceberg commit is a REST call whose metadata write goes through S3Proxy): 226 s on 2 cores
# shared with other test suites.
@pytest.mark.parametrize(
    "oracle_test",
    [
        test_candles.test_every_timeframe_equals_oracle_through_late_trades_and_reruns,
        test_candles.test_batch_run_replaces_only_its_windows,
        test_candles.test_backfill_in_chunks_equals_oracle,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_core_oracle_tests_pass_on_rest_and_s3(
    oracle_test: Any, rs_spark: SparkSession, rs: tuple[Settings, Catalog, Tables]
) -> None:
    settings, catalog, tables = rs
    # (the backfill runs the one backfill, which needs the settings of these tables)
    backfill = oracle_test is test_candles.test_backfill_in_chunks_equals_oracle
    oracle_test(rs_spark, catalog, tables, *([settings] if backfill else []))
    # Spark wrote the candles' data files through S3FileIO into the S3 server
    files = _s3_files(settings, tables.namespace)
    candle_files = [p for p in files if any(part.startswith("ohlcv_") for part in p.parts)]
    assert any(p.suffix == ".parquet" for p in candle_files)


def test_an_ingest_with_rejects_on_rest_and_s3(rs: tuple[Settings, Catalog, Tables]) -> None:
    settings, catalog, tables = rs
    test_ingest.test_same_input_twice_records_its_rejects_once(catalog, tables.namespace)
    files = _s3_files(settings, tables.namespace)
    # PyIceberg wrote trades and rejects (data and metadata) into the S3 server, nowhere else
    for table in ("trades", "trades_rejected"):
        assert any(p.suffix == ".parquet" and table in p.parts for p in files), table
    assert not (settings.data_dir / "warehouse").exists()


def test_a_flow_publishes_then_a_failed_validation_leaves_main_untouched_with_data_docs(
    prefect: None,
    rs_spark: SparkSession,
    rs: tuple[Settings, Catalog, Tables],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, catalog, tables = rs
    gx_dir = tmp_path / "gx"
    export_settings(
        monkeypatch,
        settings,
        gx_dir=str(gx_dir),
        generate_retry_delay_s="0",
        validate_retry_delay_s="0",
    )
    rng = random.Random(91)
    t1 = START + timedelta(hours=1)
    first = random_trades(rng, START, t1, 400, first_id=1)
    deliver(catalog, tables, first, now=t1)
    table = tables.candles(FIVE_MINUTES)

    # A scheduled-style flow run publishes candles equal to the oracle
    assert FLOWS["5m"](at=t1).published
    assert not diff(expected_candles(first, FIVE_MINUTES), stored_candles(rs_spark, table))
    main, mark = snapshots.main_snapshot_id(rs_spark, table), snapshots.watermark(rs_spark, table)
    published = stored_candles(rs_spark, table)

    # Given new trades and a generate step that also corrupts a candle on the audit branch
    t2 = t1 + timedelta(minutes=15)
    deliver(catalog, tables, random_trades(rng, t1, t2, 100, first_id=5_000), now=t2)
    generate = pipeline.generate

    def corrupting_generate(*args: Any, **kwargs: Any) -> jobs.RunResult:
        run = generate(*args, **kwargs)
        rs_spark.sql(
            f"UPDATE {table}.branch_{wap.AUDIT_BRANCH} SET low = high + 1 "
            "WHERE window_start = (SELECT max(window_start) "
            f"FROM {table}.branch_{wap.AUDIT_BRANCH})"
        )
        return run

    monkeypatch.setattr(pipeline, "generate", corrupting_generate)
    # When the flow runs, validation fails and so does the flow run
    state = cast(State[Any], FLOWS["5m"](at=t2, return_state=True))
    assert state.is_failed()
    with pytest.raises(ValidationFailed):
        state.result()
    # Then main is exactly as it was: snapshot, candles and watermark
    assert snapshots.main_snapshot_id(rs_spark, table) == main
    assert snapshots.watermark(rs_spark, table) == mark
    assert stored_candles(rs_spark, table) == published

    # The data docs list both checkpoint runs, and hold no secret
    index = build_data_docs(gx_dir.resolve(), settings.web_cache_dir)
    html = index.read_text()
    assert html.count("validations/ohlcv_5m_invariants/") >= 2
    _assert_no_secret_under(settings, gx_dir)


def _assert_no_secret_under(settings: Settings, root: Path) -> None:
    secrets = settings.secrets()
    assert len(secrets) >= 3  # the Connect token, the REST token, the S3 secret
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"a secret in {path}"


def test_no_secret_in_logs_status_command_lines_or_prefect(
    prefect: None, rs_settings: Settings
) -> None:
    secrets = rs_settings.secrets()
    # Logs of every server of the stack, and the S3 server's files (table metadata included)
    for log in rs_settings.stack_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert text, log
        assert not [s for s in secrets if s in text], f"a secret in {log}"
    _assert_no_secret_under(rs_settings, object_store.blob_dir(rs_settings))
    # Status lines
    for status in (
        stack.status(rs_settings),
        object_store.status(rs_settings),
        rest_catalog.status(rs_settings),
    ):
        assert not [s for s in secrets if s in status.describe()]
    # Command lines (what `ps` shows) of the three servers
    for status in (
        stack.status(rs_settings),
        object_store.status(rs_settings),
        rest_catalog.status(rs_settings),
    ):
        assert status.pid is not None
        cmdline = Path(f"/proc/{status.pid}/cmdline").read_bytes().decode(errors="replace")
        assert cmdline and not [s for s in secrets if s in cmdline], cmdline[:200]
    # Prefect's artifacts and logs of the flow runs
    with get_client(sync_client=True) as client:
        keys = ["ohlcv-5m-metrics", "ohlcv-5m-validation"]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
        logs = client.read_logs(limit=200)
    assert artifacts and logs
    for secret in secrets:
        assert all(secret not in str(a.data) for a in artifacts)
        assert all(secret not in log.message for log in logs)
