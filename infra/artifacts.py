"""Pinned JVM artifacts: coordinates and checksums in one place, fetched once into a cache.

The Spark Connect server itself ships inside the pyspark package. Iceberg's Spark runtime must
match Spark's minor version (the 3.5 runtime fails on Spark 4 at the first statement).
Fetching uses Spark's own dependency resolver (``spark.jars.packages``), which needs nothing
beyond Java and the pyspark package; every jar is then checked against its pinned SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Artifact:
    group: str
    name: str
    version: str
    sha256: str

    @property
    def coordinate(self) -> str:
        return f"{self.group}:{self.name}:{self.version}"

    @property
    def file_name(self) -> str:
        # Spark's resolver (Ivy) names retrieved jars group_artifact-version.jar.
        return f"{self.group}_{self.name}-{self.version}.jar"


ICEBERG_SPARK_RUNTIME = Artifact(
    "org.apache.iceberg",
    "iceberg-spark-runtime-4.1_2.13",
    "1.12.0",
    "3123c3798af642dd537230923548e013ef41cc28b6626e5225808cf5670a0f82",
)
SQLITE_JDBC = Artifact(
    "org.xerial",
    "sqlite-jdbc",
    "3.54.1.0",
    "f8dce420a6016278497f4f0560f65602b9db858de141b541cf91a4644ebe4639",
)
POSTGRESQL_JDBC = Artifact(
    "org.postgresql",
    "postgresql",
    "42.7.14",
    "73914527305a40cce504b0d3d90b23caf565136912d607ae8ae7c5895512332c",
)

SERVER_ARTIFACTS = (ICEBERG_SPARK_RUNTIME, SQLITE_JDBC, POSTGRESQL_JDBC)


class ArtifactError(RuntimeError):
    """A pinned artifact could not be fetched or failed its checksum."""


def spark_home() -> Path:
    """The Spark distribution bundled in the installed pyspark package."""
    # Found without importing pyspark (seconds of imports a CLI command may not need).
    spec = importlib.util.find_spec("pyspark")
    assert spec is not None and spec.origin is not None, "pyspark is a dependency"
    return Path(spec.origin).parent


def spark_env() -> dict[str, str]:
    """Environment for Spark's launcher scripts: this interpreter and pyspark's SPARK_HOME."""
    env = dict(os.environ)
    env["SPARK_HOME"] = str(spark_home())
    env["PYSPARK_PYTHON"] = sys.executable
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(artifact: Artifact, cache_dir: Path) -> Path | None:
    path = cache_dir / artifact.file_name
    if path.is_file() and _sha256(path) == artifact.sha256:
        return path
    return None


def ensure_artifacts(
    cache_dir: Path, artifacts: tuple[Artifact, ...] = SERVER_ARTIFACTS
) -> list[Path]:
    """Return verified local paths of ``artifacts``, fetching missing ones into ``cache_dir``.

    Raises:
        ArtifactError: naming the artifact that could not be fetched or whose checksum differs.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    missing = [a for a in artifacts if _verified(a, cache_dir) is None]
    if missing:
        _fetch(missing, cache_dir)
    paths = []
    for artifact in artifacts:
        path = cache_dir / artifact.file_name
        if not path.is_file():
            raise ArtifactError(
                f"could not fetch {artifact.coordinate}: check access to Maven Central "
                f"(or place the jar at {path})"
            )
        actual = _sha256(path)
        if actual != artifact.sha256:
            path.unlink()
            raise ArtifactError(
                f"{artifact.coordinate} has SHA-256 {actual}, expected {artifact.sha256}: "
                "the download was corrupted or the pin in infra/artifacts.py is wrong"
            )
        paths.append(path)
    return paths


def _fetch(artifacts: list[Artifact], cache_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ohlcv-ivy-") as tmp:
        noop = Path(tmp) / "noop.py"
        noop.write_text("")
        ivy = Path(tmp) / "ivy"
        cmd = [
            str(spark_home() / "bin" / "spark-submit"),
            "--conf",
            f"spark.jars.ivy={ivy}",
            "--conf",
            "spark.jars.packages=" + ",".join(a.coordinate for a in artifacts),
            str(noop),
        ]
        result = subprocess.run(cmd, env=spark_env(), capture_output=True, text=True, check=False)
        retrieved = ivy / "jars"
        for artifact in artifacts:
            source = retrieved / artifact.file_name
            if source.is_file():
                shutil.copy2(source, cache_dir / artifact.file_name)
            else:
                tail = "\n".join(result.stderr.strip().splitlines()[-15:])
                raise ArtifactError(
                    f"could not fetch {artifact.coordinate} with Spark's resolver "
                    f"(exit {result.returncode}); check access to Maven Central.\n{tail}"
                )
