"""The embedded stack: a local Spark Connect server with the Iceberg catalog configured.

``up`` is idempotent (a running server of this data directory is reused), writes the server's
log and pid file under ``<data_dir>/stack`` and returns once the server accepts a session.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.artifacts import ensure_artifacts, server_artifacts, spark_env, spark_home
from infra.catalog_properties import spark_catalog_conf
from infra.net import port_open
from settings import CatalogType, Settings, redact

CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
SERVER_LOGGING = Path(__file__).with_name("server-log4j2.properties")
LOG_MAX_BYTES = 20 * 1024 * 1024

# Servers started by this process. Holding the Popen objects lets `down` reap them, and keeps
# Python from warning that a still-running child was garbage-collected.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """The local stack could not be started, reached or stopped."""


@dataclass(frozen=True)
class StackStatus:
    running: bool
    pid: int | None
    remote: str
    log_file: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "remote", redact(self.remote))  # never show a token

    def describe(self) -> str:
        if self.running:
            return f"running (pid {self.pid}) at {self.remote}; log: {self.log_file}"
        return f"stopped; log: {self.log_file}"


def _pid_file(settings: Settings) -> Path:
    return settings.stack_dir / "server.json"


def _log_file(settings: Settings) -> Path:
    return settings.stack_dir / "server.log"


def rotate_log(log: Path, max_bytes: int = LOG_MAX_BYTES) -> None:
    """Before a server starts, move a log grown past ``max_bytes`` to ``<name>.1`` (replacing
    the previous one): a stack restarted for months keeps at most two logs."""
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > max_bytes:
            log.replace(log.with_name(log.name + ".1"))


def alive(pid: int) -> bool:
    """Whether the process lives (a zombie counts as gone). Shared by the local servers."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    with contextlib.suppress(FileNotFoundError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def _read_pid(settings: Settings) -> int | None:
    try:
        return int(json.loads(_pid_file(settings).read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def status(settings: Settings) -> StackStatus:
    pid = _read_pid(settings)
    running = pid is not None and alive(pid)
    return StackStatus(running, pid if running else None, settings.remote, _log_file(settings))


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
    }


_SECRET_KEY = re.compile(r"secret|password|token", re.IGNORECASE)
"""Spark settings whose values are secrets (the keys Spark's own UI redacts)."""


def split_secret_conf(conf: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(public, secret) settings: secret ones go to the server in a mode-600 properties file."""
    public = {k: v for k, v in conf.items() if not _SECRET_KEY.search(k)}
    return public, {k: v for k, v in conf.items() if _SECRET_KEY.search(k)}


def _secrets_file(settings: Settings) -> Path:
    return settings.stack_dir / "server-secrets.conf"


def _redacted(cmd: list[str]) -> str:
    return " ".join("password=***" if "password=" in part else part for part in cmd)


def _start_storage_and_catalog(settings: Settings) -> None:
    """The local S3 server and REST catalog, when the settings ask for them (before Spark)."""
    if settings.local_s3:
        from infra import object_store

        object_store.up(settings)
    if settings.local_rest:
        from infra import rest_catalog

        rest_catalog.up(settings)


def _stop_storage_and_catalog(settings: Settings) -> None:
    from infra import object_store, rest_catalog

    rest_catalog.down(settings)
    object_store.down(settings)


def up(settings: Settings) -> StackStatus:
    """Start the local Spark Connect server (or reuse a running one) on a prepared catalog.

    Creating the project's tables is not infra's business: callers do it (``ensure_tables``).
    """
    if not settings.is_local:
        raise StackError(
            f"SPARK_REMOTE is set ({redact(settings.remote)}): the stack commands manage "
            "only the local server; unset SPARK_REMOTE to use it"
        )
    _start_storage_and_catalog(settings)
    current = status(settings)
    if current.running:
        _wait_ready(settings, current.pid)
        return current
    dead = _read_pid(settings)
    if dead is not None and (proc := _STARTED.pop(dead, None)) is not None:
        proc.wait(timeout=10)  # reap a server of ours that died (crashed, killed)
    if port_open(settings.connect_host, settings.connect_port):
        raise StackError(
            f"port {settings.connect_port} on {settings.connect_host} is used by another process: "
            "stop it or choose another port with OHLCV_CONNECT_PORT"
        )

    jars = ensure_artifacts(settings.jar_cache_dir, server_artifacts(s3=settings.uses_s3))
    from infra.catalog import open_catalog

    catalog = open_catalog(settings)  # creates the catalog's own tables the server expects
    if settings.catalog_type is CatalogType.SQLITE:
        # The JDBC catalog opens SQLite through the driver's own connection; close ours first.
        catalog.engine.dispose()  # type: ignore[attr-defined]

    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    token = _ensure_token(settings)
    cores = settings.local_cores or "*"
    master = f"local[{cores}]"
    if settings.workers:
        master = _start_cluster(settings)
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
        f"-Dlog4j2.configurationFile={SERVER_LOGGING.as_uri()} "
        f"-Dohlcv.serverLogLevel={settings.server_log_level}",
        "--jars",
        ",".join(str(j) for j in jars),
    ]
    public, secret = split_secret_conf(server_conf(settings))
    for key, value in public.items():
        cmd += ["--conf", f"{key}={value}"]
    if secret:
        # Passwords, keys and tokens on the command line would show in `ps`.
        from infra.local_servers import java_properties, write_private

        write_private(_secrets_file(settings), java_properties(secret))
        cmd += ["--properties-file", str(_secrets_file(settings))]
    cmd.append("spark-internal")

    # spark-submit execs into the JVM, so this pid is the server's. The token travels in the
    # environment: a --conf value would show in `ps`.
    env = {"SPARK_CONNECT_AUTHENTICATE_TOKEN": token}
    if settings.local_s3:
        from infra.object_store import SDK_ENV

        env.update(SDK_ENV)
    pid = spawn(settings, _log_file(settings), cmd, env)
    _pid_file(settings).write_text(json.dumps({"pid": pid, "port": settings.connect_port}))
    try:
        _wait_ready(settings, pid)
    except StackError:
        stop_process(pid)
        _pid_file(settings).unlink(missing_ok=True)
        _stop_cluster(settings)
        raise
    return status(settings)


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


def spawn(
    settings: Settings,
    log: Path,
    cmd: list[str],
    extra_env: dict[str, str] | None = None,
    umask: int = -1,
) -> int:
    """Start ``cmd`` in a process group of its own (so `down` stops its children too);
    ``umask`` (-1: inherited) sets the mode of the files it creates."""
    rotate_log(log)
    with log.open("ab") as out:
        out.write(f"\n=== starting: {_redacted(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**spark_env(), **(extra_env or {})},
            cwd=settings.stack_dir,
            start_new_session=True,  # a worker's executors die with its process group
            umask=umask,
        )
    _STARTED[proc.pid] = proc
    return proc.pid


def _spark_class(settings: Settings, name: str, args: list[str]) -> int:
    cmd = [str(spark_home() / "bin" / "spark-class"), *args]
    return spawn(settings, settings.stack_dir / f"{name}.log", cmd)


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
    _cluster_file(settings).write_text(json.dumps(pids))
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
        _cluster_file(settings).write_text(json.dumps(pids))
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
    pids = cluster_pids(settings)
    for pid in [*pids["workers"], *pids["master"]]:
        if alive(pid):
            stop_process(pid)
        elif (proc := _STARTED.pop(pid, None)) is not None:
            proc.wait(timeout=10)  # reap a worker that was killed
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


def _log_tail(settings: Settings, lines: int = 25) -> str:
    try:
        return "\n".join(_log_file(settings).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait_ready(settings: Settings, pid: int | None) -> None:
    deadline = time.monotonic() + settings.server_start_timeout_s
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            raise StackError(
                f"the Spark Connect server exited during start-up; last lines of "
                f"{_log_file(settings)}:\n{_log_tail(settings)}"
            )
        if port_open("127.0.0.1", settings.connect_port):
            _check_session(settings)
            return
        time.sleep(0.25)
    raise StackError(
        f"the Spark Connect server did not accept connections on port {settings.connect_port} "
        f"within {settings.server_start_timeout_s:.0f} s (OHLCV_SERVER_START_TIMEOUT_S); "
        f"last lines of {_log_file(settings)}:\n{_log_tail(settings)}"
    )


def _check_session(settings: Settings) -> None:
    from infra.session import connect

    spark = connect(settings)
    try:
        spark.sql("SELECT 1").collect()
    finally:
        spark.stop()


def stop_process(pid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group of ``pid`` (a server started with a session of its own), then
    SIGKILL it after ``timeout_s``. Shared by the local servers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    proc = _STARTED.pop(pid, None)
    if proc is not None:
        proc.wait(timeout=10)


def down(settings: Settings) -> StackStatus:
    """Stop the local server (its standalone cluster, S3 server and REST catalog, if any); a
    no-op otherwise."""
    pid = _read_pid(settings)
    if pid is not None and alive(pid):
        stop_process(pid)
    _pid_file(settings).unlink(missing_ok=True)
    _stop_cluster(settings)
    _stop_storage_and_catalog(settings)
    return status(settings)
