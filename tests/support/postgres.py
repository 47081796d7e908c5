"""A throwaway PostgreSQL server from Debian's `postgresql` package, for the catalog tests."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Postgres:
    port: int
    database: str
    user: str
    password: str

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{self.database}"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `make test` installs Debian's postgresql")
    return Path(found[-1]).parent


@contextmanager
def running_postgres(port: int) -> Iterator[Postgres]:
    """initdb + pg_ctl start on 127.0.0.1:port in a temporary directory; stopped on exit.

    PostgreSQL refuses to run as root, so as root it runs as the package's `postgres` user.
    """
    bin_dir = _bin_dir()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="ohlcv-pg-"))
    data, log = root / "data", root / "server.log"
    if as_root:
        shutil.chown(root, "postgres", "postgres")
    pg = Postgres(port, "ohlcv", "ohlcv", "ohlcv-test-password")
    password_file = root / "pw"
    password_file.write_text(pg.password)
    if as_root:
        shutil.chown(password_file, "postgres", "postgres")

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    run(
        str(bin_dir / "initdb"),
        "-D",
        str(data),
        "-U",
        pg.user,
        "--auth=scram-sha-256",
        f"--pwfile={password_file}",
        "-E",
        "UTF8",
    )
    run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(log),
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
        "-w",
        "start",
    )
    try:
        env = {**os.environ, "PGPASSWORD": pg.password}
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                [
                    str(bin_dir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    pg.user,
                    pg.database,
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if done.returncode != 0:
            raise RuntimeError(f"createdb failed: {done.stderr.strip()}")
        yield pg
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
