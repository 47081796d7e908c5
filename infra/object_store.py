"""The local S3 server of the production-shaped stack (``OHLCV_STORAGE=s3``, no endpoint set).

S3Proxy serves the real S3 REST API from a directory of the data dir (jclouds' filesystem
provider: a bucket is a sub-directory), on loopback, and refuses every request that is not
signed with the data directory's credentials (AWS signature v2 or v4). Spark's S3FileIO and
PyIceberg reach it exactly as they reach any S3-compatible store: only the endpoint differs. It
is a pinned Maven artifact (``infra/jars.lock``), so it needs no Docker engine.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

from infra.artifacts import S3PROXY_JARS, ensure_jar_set, java_executable
from infra.local_servers import HOST, JVM_OPTIONS, Launch, LocalServer, write_private
from infra.processes import StackStatus
from settings import LOCAL_S3_BUCKET, Settings

S3PROXY_MAIN = "org.gaul.s3proxy.Main"
SERVER = LocalServer("s3", "local S3 server", "OHLCV_S3_PORT")
PRIVATE_UMASK = 0o077
"""jclouds' filesystem provider serves a bucket or object whose file others may read as
public-read, to anonymous requests too (checked: an anonymous GET listed a 755 bucket). So the
buckets are 700 and the server creates every file and directory with this umask."""
SDK_ENV = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED",
}
"""For the JVMs that use the local S3 server through the AWS SDK v2 (Spark, the REST catalog).
Since 2.30 the SDK streams uploads with trailing checksums by default, which S3Proxy 2.6.0
rejects ("The provided 'x-amz-content-sha256' header does not match"); with these, it sends
checksums only where S3 requires them, as SDKs did before. MinIO and S3 accept both."""

LOGBACK = """<configuration>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDERR"/></root>
</configuration>
"""
"""S3Proxy's jar has no logging configuration: logback's default logs every request at DEBUG
(40 MB in three minutes here)."""


def blob_dir(settings: Settings) -> Path:
    """The directory the local S3 server stores its buckets in."""
    return settings.data_dir.resolve() / "s3"


def url(settings: Settings) -> str:
    return f"http://{HOST}:{settings.s3_port}"


def ensure_credentials(settings: Settings) -> tuple[str, str]:
    """The S3 credentials: the settings' pair, else one generated per data dir (mode 600)."""
    existing = settings.s3_credentials()
    if existing:
        return existing
    pair = {
        "access_key_id": f"ohlcv-{secrets.token_hex(8)}",
        "secret_access_key": secrets.token_urlsafe(32),
    }
    write_private(settings.s3_credentials_file, json.dumps(pair))
    return pair["access_key_id"], pair["secret_access_key"]


def refuses_anonymous(settings: Settings) -> bool:
    """Health check: the server answers, and answers an unsigned request with 403."""
    try:
        with urllib.request.urlopen(f"{url(settings)}/{LOCAL_S3_BUCKET}/", timeout=2):
            return False  # an anonymous listing succeeded: not our server, or auth is off
    except urllib.error.HTTPError as e:
        e.close()  # an unclosed error response leaks its socket
        return e.code == 403
    except OSError:
        return False


def up(settings: Settings) -> StackStatus:
    """Start the local S3 server with the bucket ``warehouse`` (or reuse a running one)."""
    SERVER.refuse_a_taken_port(settings, settings.s3_port)
    access_key_id, secret = ensure_credentials(settings)
    for directory in (blob_dir(settings), blob_dir(settings) / LOCAL_S3_BUCKET):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
    jars = ensure_jar_set(settings.jar_cache_dir, S3PROXY_JARS)
    logback = settings.stack_dir / "s3-logback.xml"
    logback.parent.mkdir(parents=True, exist_ok=True)
    logback.write_text(LOGBACK)
    config = {
        "s3proxy.endpoint": url(settings),
        "s3proxy.authorization": "aws-v2-or-v4",
        "s3proxy.identity": access_key_id,
        "s3proxy.credential": secret,
        "jclouds.provider": "filesystem",
        "jclouds.filesystem.basedir": str(blob_dir(settings)),
    }
    cmd = [
        java_executable(),
        *JVM_OPTIONS,
        f"-Dlogback.configurationFile={logback}",
        "-cp",
        ":".join(str(j) for j in jars),
        S3PROXY_MAIN,
        "--properties",
        str(SERVER.config_file(settings)),
    ]
    SERVER.write_config(settings, config)
    launch = Launch(cmd, umask=PRIVATE_UMASK)
    SERVER.start(settings, settings.s3_port, lambda: launch, lambda: refuses_anonymous(settings))
    return status(settings)


def status(settings: Settings) -> StackStatus:
    return SERVER.status(settings, url(settings))


def down(settings: Settings) -> StackStatus:
    SERVER.stop(settings)
    return status(settings)


def filesystem(settings: Settings) -> pafs.S3FileSystem:
    """A pyarrow S3 file system on the settings' endpoint and credentials (the local S3
    server's generated pair when no others are set): what reads an ``s3://`` landing zone."""
    credentials = settings.s3_credentials()
    if settings.local_s3:
        credentials = credentials or ensure_credentials(settings)
        for variable, value in SDK_ENV.items():  # (as infra.catalog does for PyIceberg)
            os.environ.setdefault(variable, value)
    endpoint = settings.s3_endpoint_url
    scheme, _, host = endpoint.partition("://")
    key, secret = credentials if credentials else (None, None)
    return pafs.S3FileSystem(
        access_key=key,
        secret_key=secret,
        endpoint_override=host or endpoint,
        scheme=scheme if host else "https",
        region=settings.s3_region,
        force_virtual_addressing=not settings.s3_path_style_access,
    )
