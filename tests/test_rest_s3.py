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
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pyarrow.fs as pafs
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.states import State
from pyiceberg.catalog import load_catalog
from pyiceberg.exceptions import UnauthorizedError

from core.timeframes import TIMEFRAMES
from expectations.data_docs import build_data_docs
from expectations.validation import ValidationFailed
from flows import pipeline
from flows.candle_flows import FLOWS
from infra import object_store, rest_catalog, stack
from infra.catalog_properties import pyiceberg_catalog_properties, spark_catalog_conf
from settings import LOCAL_S3_BUCKET, CatalogType, Settings, StorageType
from spark_jobs import jobs, snapshots, wap
from tests.support.environment import export_settings
from tests.support.oracle import diff, expected_candles, stored_candles
from tests.support.ports import port
from tests.support.stacks import Given, LocalStack, on_shapes
from tests.support.trades import START, bad_rows, deliver, random_trades

S3_PORT, REST_PORT = port(15017), port(15018)
FIVE_MINUTES = TIMEFRAMES["5m"]


ON_REST_S3 = on_shapes("rest_s3")


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


@ON_REST_S3
def test_the_stack_runs_rest_and_s3_on_loopback(shape: LocalStack) -> None:
    rs_settings = shape.settings
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


@ON_REST_S3
def test_rest_catalog_and_s3_refuse_requests_without_valid_credentials(given: Given) -> None:
    rs_settings = given.settings
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
    stored = _s3_files(rs_settings, given.tables.namespace)[0]
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


@ON_REST_S3
def test_spark_and_pyiceberg_write_their_files_into_the_s3_server_only(given: Given) -> None:
    # (the core oracle tests and the ingest with rejects run on this shape too: on_shapes)
    settings, spark, catalog, tables = given
    now = START + timedelta(hours=1)
    trades = random_trades(random.Random(92), START, now, 300, first_id=1)
    deliver(catalog, tables, trades, bad_rows(900_000), now=now)
    jobs.refresh_candles(spark, tables, FIVE_MINUTES, now=now)
    assert not diff(
        expected_candles(trades, FIVE_MINUTES),
        stored_candles(spark, tables.candles(FIVE_MINUTES)),
    )
    files = _s3_files(settings, tables.namespace)
    # PyIceberg wrote trades and rejects, Spark the candles (through S3FileIO): data and
    # metadata, into the S3 server and nowhere else
    for table in ("trades", "trades_rejected", FIVE_MINUTES.table):
        assert any(p.suffix == ".parquet" and table in p.parts for p in files), table
        assert any(p.name.endswith(".metadata.json") and table in p.parts for p in files), table
    assert not (settings.data_dir / "warehouse").exists()


@ON_REST_S3
def test_a_flow_publishes_then_a_failed_validation_leaves_main_untouched_with_data_docs(
    prefect: None, given: Given, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, rs_spark, catalog, tables = given
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


@ON_REST_S3
def test_no_secret_in_logs_status_command_lines_or_prefect(
    prefect: None, shape: LocalStack
) -> None:
    rs_settings = shape.settings
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
