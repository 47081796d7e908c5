"""The local Spark Connect server with the Iceberg catalog configured (and, with
``OHLCV_WORKERS``, a standalone cluster on loopback for it).

``up`` is idempotent (a running server of this data directory is reused), writes the server's
log and pid file under ``<data_dir>/stack`` and returns once the server accepts a session.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import urllib.request
from pathlib import Path

from infra.artifacts import ensure_artifacts, server_artifacts, spark_env, spark_home
from infra.catalog_properties import spark_catalog_conf
from infra.local_servers import Launch, LocalServer, java_properties, write_private
from infra.net import port_open
from infra.processes import (
    StackError,
    StackStatus,
    spawn,
    start_time,
    stop_process,
)
from settings import CatalogType, Settings, redact

CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
SERVER_LOGGING = Path(__file__).with_name("server-log4j2.properties")
SERVER = LocalServer("server", "Spark Connect server", "OHLCV_CONNECT_PORT")


def status(settings: Settings) -> StackStatus:
    return SERVER.status(settings, settings.remote)


ABANDONED_OPERATIONS_CONF = {
    "spark.connect.execute.reattachable.senderMaxStreamDuration": "10s",
    "spark.connect.execute.manager.detachedTimeout": "15s",
    "spark.connect.execute.manager.maintenanceInterval": "5s",
}
"""How soon the server interrupts an operation whose client is gone (killed, or its machine
lost). The server notices a client is gone only when the response stream it holds ends, which
it does every ``senderMaxStreamDuration`` (a live client reattaches at once); it then drops an
operation nobody reattached to within ``detachedTimeout``, checked every
``maintenanceInterval``. With Spark's defaults (2 min, 5 min, 30 s) a MERGE of a client killed
with -9 ran on for over 5 minutes and could commit after the next writer had started. Here it
ends within about 30 s, before the dead client's writer lease (at least 60 s,
:mod:`flows.writers`) lets the next writer of the table in."""


def server_conf(settings: Settings) -> dict[str, str]:
    """Spark settings of the local Connect server (catalog, time zone, loopback binding)."""
    local_dir = settings.stack_dir / "spark-local"
    return {
        "spark.connect.grpc.binding.address": settings.connect_host,
        "spark.connect.grpc.binding.port": str(settings.connect_port),
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.host": "127.0.0.1",
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.sql.defaultCatalog": settings.catalog_name,
        "spark.local.dir": str(local_dir),
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.port": str(settings.ui_port),
        **ABANDONED_OPERATIONS_CONF,
        **spark_catalog_conf(settings),
        **_executor_conf(settings),
    }


def _executor_conf(settings: Settings) -> dict[str, str]:
    """A local cluster's executors run with the server's extra JVM options too."""
    if settings.workers and settings.server_java_options:
        return {"spark.executor.extraJavaOptions": settings.server_java_options}
    return {}


_SECRET_KEY = re.compile(r"secret|password|token", re.IGNORECASE)
"""Spark settings whose values are secrets (the keys Spark's own UI redacts)."""


def split_secret_conf(conf: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(public, secret) settings: secret ones go to the server in a mode-600 properties file."""
    public = {k: v for k, v in conf.items() if not _SECRET_KEY.search(k)}
    return public, {k: v for k, v in conf.items() if _SECRET_KEY.search(k)}


def _secrets_file(settings: Settings) -> Path:
    return settings.stack_dir / "server-secrets.conf"


def require_local(settings: Settings) -> None:
    """Refuse, in one line, to manage a server when SPARK_REMOTE points elsewhere."""
    if not settings.is_local:
        raise StackError(
            f"SPARK_REMOTE is set ({redact(settings.remote)}): the stack commands manage "
            "only the local server; unset SPARK_REMOTE to use it"
        )


def up(settings: Settings) -> StackStatus:
    """Start the local Spark Connect server (or reuse a running one) on a prepared catalog.

    Its catalog's storage and server (local S3, REST catalog) must run already
    (:func:`infra.stack.up` starts them first). Creating the project's tables is not infra's
    business: callers do it (``ensure_tables``).
    """
    require_local(settings)

    def launch() -> Launch:
        jars = ensure_artifacts(settings.jar_cache_dir, server_artifacts(s3=settings.uses_s3))
        from infra.catalog import open_catalog

        catalog = open_catalog(settings)  # creates the catalog's own tables the server expects
        if settings.catalog_type is CatalogType.SQLITE:
            # The JDBC catalog opens SQLite through the driver's own connection; close ours.
            catalog.engine.dispose()  # type: ignore[attr-defined]
        token = _ensure_token(settings)
        cores = settings.local_cores or "*"
        master = _start_cluster(settings) if settings.workers else f"local[{cores}]"
        return Launch(_command(settings, jars, master), _server_env(settings, token))

    try:
        SERVER.start(
            settings,
            settings.connect_port,
            launch,
            lambda: port_open("127.0.0.1", settings.connect_port) and _accepts_a_session(settings),
            host=settings.connect_host,
        )
    except StackError:
        _stop_cluster(settings)
        raise
    return status(settings)


def _command(settings: Settings, jars: list[Path], master: str) -> list[str]:
    cmd = [
        str(spark_home() / "bin" / "spark-submit"),
        "--class",
        CONNECT_SERVER_CLASS,
        "--name",
        "ohlcv-connect",
        "--master",
        master,
        "--driver-memory",
        settings.driver_memory,
        "--driver-java-options",
        " ".join(
            [
                f"-Dlog4j2.configurationFile={SERVER_LOGGING.as_uri()}",
                f"-Dohlcv.serverLogLevel={settings.server_log_level}",
                *settings.server_java_options.split(),
            ]
        ),
        "--jars",
        ",".join(str(j) for j in jars),
    ]
    public, secret = split_secret_conf(server_conf(settings))
    for key, value in public.items():
        cmd += ["--conf", f"{key}={value}"]
    if secret:
        # Passwords, keys and tokens on the command line would show in `ps`.
        write_private(_secrets_file(settings), java_properties(secret))
        cmd += ["--properties-file", str(_secrets_file(settings))]
    cmd.append("spark-internal")
    return cmd


def _server_env(settings: Settings, token: str) -> dict[str, str]:
    """spark-submit execs into the JVM, so the spawned pid is the server's. The token travels
    in the environment: a --conf value would show in `ps`."""
    env = {**spark_env(), "SPARK_CONNECT_AUTHENTICATE_TOKEN": token}
    if settings.local_s3:
        from infra.object_store import SDK_ENV

        env.update(SDK_ENV)
    return env


# Standalone cluster -------------------------------------------------------------------------


def _cluster_file(settings: Settings) -> Path:
    return settings.stack_dir / "cluster.json"


def cluster_pids(settings: Settings) -> dict[str, list[int]]:
    """Pids of the standalone master and workers this data directory started (may be dead)."""
    try:
        data = json.loads(_cluster_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return {"master": [], "workers": []}
    return {"master": list(data.get("master", [])), "workers": list(data.get("workers", []))}


def _spark_class(settings: Settings, name: str, args: list[str]) -> int:
    cmd = [str(spark_home() / "bin" / "spark-class"), *args]
    return spawn(settings.stack_dir / f"{name}.log", cmd, spark_env(), settings.stack_dir)


def _record_cluster(settings: Settings, pids: dict[str, list[int]]) -> None:
    """The cluster's pids, each with its start time (a pid may name another process later)."""
    starts = {str(pid): start_time(pid) for pid in [*pids["master"], *pids["workers"]]}
    _cluster_file(settings).write_text(json.dumps({**pids, "start": starts}))


def _started(settings: Settings) -> dict[str, int | None]:
    try:
        return dict(json.loads(_cluster_file(settings).read_text()).get("start", {}))
    except (FileNotFoundError, ValueError):
        return {}


def alive_workers(settings: Settings) -> int:
    """Workers the standalone master counts as alive (-1 when its UI does not answer)."""
    url = f"http://127.0.0.1:{settings.master_ui_port}/json/"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(json.load(response).get("aliveworkers", 0))
    except (OSError, ValueError):
        return -1


def _start_cluster(settings: Settings) -> str:
    """Start a standalone master and ``settings.workers`` workers on loopback; return its URL."""
    for port in (settings.master_port, settings.master_ui_port):
        if port_open("127.0.0.1", port):
            raise StackError(
                f"port {port} on 127.0.0.1 is used by another process: stop it or choose "
                "others with OHLCV_MASTER_PORT / OHLCV_MASTER_UI_PORT"
            )
    url = f"spark://127.0.0.1:{settings.master_port}"
    pids: dict[str, list[int]] = {"master": [], "workers": []}
    pids["master"].append(
        _spark_class(
            settings,
            "master",
            [
                MASTER_CLASS,
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.master_port),
                "--webui-port",
                str(settings.master_ui_port),
            ],
        )
    )
    _record_cluster(settings, pids)
    for i in range(settings.workers):
        work_dir = settings.stack_dir / f"worker-{i}"
        work_dir.mkdir(exist_ok=True)
        pids["workers"].append(
            _spark_class(
                settings,
                f"worker-{i}",
                [
                    WORKER_CLASS,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(settings.worker_cores),
                    "--memory",
                    settings.worker_memory,
                    "--webui-port",
                    "0",
                    "--work-dir",
                    str(work_dir),
                    url,
                ],
            )
        )
        _record_cluster(settings, pids)
    deadline = time.monotonic() + settings.server_start_timeout_s
    while alive_workers(settings) < settings.workers:
        if time.monotonic() > deadline:
            _stop_cluster(settings)
            raise StackError(
                f"the standalone cluster did not register {settings.workers} workers within "
                f"{settings.server_start_timeout_s:.0f} s; see {settings.stack_dir}/master.log "
                "and worker-*.log"
            )
        time.sleep(0.5)
    return url


def _stop_cluster(settings: Settings) -> None:
    pids, started = cluster_pids(settings), _started(settings)
    for pid in [*pids["workers"], *pids["master"]]:
        stop_process(pid, started=started.get(str(pid)))  # (a killed worker is only reaped)
    _cluster_file(settings).unlink(missing_ok=True)


def _ensure_token(settings: Settings) -> str:
    """The token the server will require: the setting, or the data directory's own (mode 600)."""
    token = settings.local_token()
    if token:
        return token
    token = secrets.token_urlsafe(32)
    fd = os.open(settings.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token)
    return token


def _accepts_a_session(settings: Settings) -> bool:
    from infra.session import connect

    spark = connect(settings)
    try:
        spark.sql("SELECT 1").collect()
    finally:
        spark.stop()
    return True


def down(settings: Settings) -> StackStatus:
    """Stop the local server and its standalone cluster, if any; a no-op otherwise."""
    SERVER.stop(settings)
    _stop_cluster(settings)
    return status(settings)
