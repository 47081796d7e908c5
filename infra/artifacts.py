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

ICEBERG_AWS_BUNDLE = Artifact(
    "org.apache.iceberg",
    "iceberg-aws-bundle",
    ICEBERG_SPARK_RUNTIME.version,
    "dd7e49ffa4ac9b215bed846581991259e3aec9bb2fa08d6cec029c46cd66d957",
)
"""The AWS SDK for Iceberg's S3FileIO (the runtime holds S3FileIO itself, not the SDK). The
server loads it only when the warehouse is on S3, so the default start-up stays as it was."""

SERVER_ARTIFACTS = (ICEBERG_SPARK_RUNTIME, SQLITE_JDBC, POSTGRESQL_JDBC)


def server_artifacts(*, s3: bool) -> tuple[Artifact, ...]:
    """The jars the Spark Connect server loads: the catalog's, and the AWS SDK for S3."""
    return (*SERVER_ARTIFACTS, ICEBERG_AWS_BUNDLE) if s3 else SERVER_ARTIFACTS


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


# Whole classpaths: the local S3 server and the local REST catalog --------------------------
#
# These run as JVM programs of their own, so every jar of their dependency closure is pinned,
# not just the roots: `jars.lock` beside this file lists each jar with its SHA-256, and a
# resolution that brings a jar the lock does not list (or a different one) is refused.
# Resolution uses Ivy, the resolver Spark itself uses for `spark.jars.packages`, from the jar
# pyspark ships; an ivy.xml is needed because `spark.jars.packages` cannot name a classifier
# (Iceberg's REST server classes are in iceberg-core's `tests` jar).

JARS_LOCK = Path(__file__).with_name("jars.lock")


@dataclass(frozen=True)
class Dependency:
    """A module to resolve with its dependencies; ``classifiers`` names its jars ("" = main)."""

    coordinate: str
    classifiers: tuple[str, ...] = ("",)
    transitive: bool = True


@dataclass(frozen=True)
class JarSet:
    """The complete classpath of a JVM program, resolved from ``roots`` and pinned in the lock."""

    name: str
    roots: tuple[Dependency, ...]


S3PROXY_JARS = JarSet("s3proxy", (Dependency("org.gaul:s3proxy:2.6.0"),))
"""S3Proxy: the S3 API (signature v2/v4 auth) served from a directory by jclouds' filesystem
provider."""

ICEBERG_REST_SERVER_VERSION = "1.11.0"
"""Iceberg of the local REST catalog server. RESTCatalogAdapter and RESTCatalogServlet, Iceberg's
own REST server, live in iceberg-core's `tests` jar, which Maven Central has for 1.11.0 but not
for 1.12.0 (checked 2026-11-27). The server is a process of its own that clients reach only
through the REST protocol, so its Iceberg version need not be the Spark runtime's (the compose
file's REST fixture image is 1.10.0)."""

_ICEBERG = ICEBERG_REST_SERVER_VERSION
REST_CATALOG_JARS = JarSet(
    "iceberg-rest",
    (
        Dependency(f"org.apache.iceberg:iceberg-core:{_ICEBERG}", classifiers=("", "tests")),
        Dependency(f"org.apache.iceberg:iceberg-aws:{_ICEBERG}"),
        Dependency(f"org.apache.iceberg:iceberg-aws-bundle:{_ICEBERG}", transitive=False),
        Dependency("org.eclipse.jetty.ee10:jetty-ee10-servlet:12.1.14"),
        Dependency(SQLITE_JDBC.coordinate),
        Dependency("org.slf4j:slf4j-simple:2.0.20"),
    ),
)
"""Iceberg's REST catalog server classes over a JDBC (SQLite) catalog, Jetty, S3FileIO."""

JAR_SETS = (S3PROXY_JARS, REST_CATALOG_JARS)


def read_lock(lock: Path = JARS_LOCK) -> dict[str, dict[str, str]]:
    """``{set name: {jar file name: sha256}}`` from the lock file."""
    pins: dict[str, dict[str, str]] = {}
    if not lock.is_file():
        return pins
    for line in lock.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, file_name, sha = line.split()
            pins.setdefault(name, {})[file_name] = sha
    return pins


def ensure_jar_set(cache_dir: Path, jar_set: JarSet, lock: Path = JARS_LOCK) -> list[Path]:
    """Verified paths of every jar of ``jar_set``, fetched into ``cache_dir/<name>`` if needed.

    Raises:
        ArtifactError: when the lock has no entry for the set, a jar cannot be fetched, its
            checksum differs, or the resolution brings a jar the lock does not list.
    """
    pins = read_lock(lock).get(jar_set.name)
    if not pins:
        raise ArtifactError(
            f"{lock.name} pins no jars for {jar_set.name!r}: run "
            "`uv run python -m infra.artifacts lock` and commit the file"
        )
    target = cache_dir / jar_set.name
    if not _all_verified(target, pins):
        with tempfile.TemporaryDirectory(prefix="ohlcv-ivy-") as tmp:
            retrieved = _resolve(jar_set, Path(tmp))
            _check_against_pins(jar_set, retrieved, pins)
            target.mkdir(parents=True, exist_ok=True)
            for path in retrieved:
                shutil.copy2(path, target / path.name)
    return [target / name for name in sorted(pins)]


def _all_verified(target: Path, pins: dict[str, str]) -> bool:
    return all(
        (target / name).is_file() and _sha256(target / name) == sha for name, sha in pins.items()
    )


def _check_against_pins(jar_set: JarSet, retrieved: list[Path], pins: dict[str, str]) -> None:
    found = {path.name: path for path in retrieved}
    unpinned = sorted(set(found) - set(pins))
    if unpinned:
        raise ArtifactError(
            f"resolving {jar_set.name!r} brought jars {JARS_LOCK.name} does not pin: "
            f"{', '.join(unpinned)}; review them, then re-lock (`python -m infra.artifacts lock`)"
        )
    for name, sha in pins.items():
        if name not in found:
            raise ArtifactError(
                f"could not fetch {name} for {jar_set.name!r}: check access to Maven Central"
            )
        actual = _sha256(found[name])
        if actual != sha:
            raise ArtifactError(
                f"{name} has SHA-256 {actual}, expected {sha}: the download was corrupted or "
                f"the pin in {JARS_LOCK.name} is wrong"
            )


def _ivy_xml(jar_set: JarSet) -> str:
    rows = []
    for dep in jar_set.roots:
        group, name, version = dep.coordinate.split(":")
        artifacts = "".join(
            # A distinct type per classifier: Ivy mixes up two artifacts of one type and name.
            f'<artifact name="{name}" type="{classifier or "jar"}" ext="jar"'
            + (f' m:classifier="{classifier}"' if classifier else "")
            + "/>"
            for classifier in dep.classifiers
        )
        rows.append(
            f'    <dependency org="{group}" name="{name}" rev="{version}" '
            f'transitive="{str(dep.transitive).lower()}" conf="default->default">'
            f"{artifacts}</dependency>"
        )
    return (
        '<ivy-module version="2.0" xmlns:m="http://ant.apache.org/ivy/maven">\n'
        f'  <info organisation="ohlcv" module="{jar_set.name}"/>\n'
        '  <configurations><conf name="default"/></configurations>\n'
        "  <dependencies>\n" + "\n".join(rows) + "\n  </dependencies>\n</ivy-module>\n"
    )


def java_executable() -> str:
    """The ``java`` of JAVA_HOME, else the one on PATH (the one Spark's scripts use)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise ArtifactError("no `java` on PATH and no JAVA_HOME: install Java 17")
    return found


IVY_CACHE = Path.home() / ".cache" / "ohlcv" / "ivy"
"""Ivy's download cache, outside the repository (resolution re-checks every jar's SHA-256)."""


def _resolve(jar_set: JarSet, tmp: Path) -> list[Path]:
    """Resolve ``jar_set`` with Ivy into ``tmp/jars``; return the retrieved jars."""
    ivy_jars = sorted((spark_home() / "jars").glob("ivy-*.jar"))
    if not ivy_jars:
        raise ArtifactError(f"no Ivy jar in {spark_home() / 'jars'}: reinstall pyspark")
    (tmp / "ivy.xml").write_text(_ivy_xml(jar_set))
    out = tmp / "jars"
    cmd = [
        java_executable(),
        "-cp",
        str(ivy_jars[-1]),
        "org.apache.ivy.Main",
        "-ivy",
        str(tmp / "ivy.xml"),
        "-cache",
        str(IVY_CACHE),
        "-confs",
        "default",
        "-retrieve",
        str(out / "[organisation]_[artifact]-[revision](-[classifier]).[ext]"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    retrieved = sorted(out.glob("*.jar")) if out.is_dir() else []
    if result.returncode != 0 or not retrieved:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ArtifactError(
            f"could not resolve {jar_set.name!r} with Ivy (exit {result.returncode}); check "
            f"access to Maven Central.\n{tail}"
        )
    return retrieved


def lock_jar_sets(lock: Path = JARS_LOCK) -> None:
    """Resolve every jar set afresh and write the lock (a maintainer's step, like `uv lock`)."""
    lines = [
        "# Every jar of the local S3 and REST catalog servers' classpaths, with its SHA-256.",
        "# Written by `uv run python -m infra.artifacts lock`; review the diff before committing.",
    ]
    for jar_set in JAR_SETS:
        with tempfile.TemporaryDirectory(prefix="ohlcv-ivy-") as tmp:
            for path in _resolve(jar_set, Path(tmp)):
                lines.append(f"{jar_set.name} {path.name} {_sha256(path)}")
    lock.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["lock"]:
        sys.exit("usage: python -m infra.artifacts lock")
    lock_jar_sets()
