"""The suite's stacks: settings -> stack up -> session -> a namespace per test, written once.

A :class:`LocalStack` starts through the same ``infra`` code users run (``stack.up``) and only
when something needs it: the session's stack serves PyIceberg-only tests without a JVM. The
shapes of :data:`SHAPES` are the catalog/storage combinations the cross-catalog tests run on;
each is one stack per session (see the ``shape`` fixture).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables, ensure_tables
from infra import stack
from infra.catalog import open_catalog
from infra.session import close, connect
from settings import CatalogType, Settings, StorageType
from tests.support import ports
from tests.support.environment import SESSION_JAVA_OPTIONS
from tests.support.postgres import running_postgres

SHAPES = ("sqlite", "postgres", "rest_s3")
"""The embedded SQLite JDBC catalog on a local warehouse (the session's stack), the JDBC catalog
on PostgreSQL, and the production shape: an Iceberg REST catalog on S3 object storage."""


@dataclass(frozen=True)
class Given:
    """What a test gets on a stack: empty tables in a namespace of its own."""

    settings: Settings
    """The stack's settings with this namespace (and a GX project of its own, when asked)."""
    spark: SparkSession
    catalog: Catalog
    tables: Tables

    def __iter__(self) -> Iterator[Any]:
        """``settings, spark, catalog, tables = given``."""
        return iter((self.settings, self.spark, self.catalog, self.tables))


class LocalStack:
    """One local stack of the suite, started on first use, stopped by :meth:`down`."""

    def __init__(self, settings: Settings, title: str) -> None:
        self.settings, self.title = settings, title
        self._status: stack.StackStatus | None = None
        self._spark: SparkSession | None = None

    def up(self) -> stack.StackStatus:
        """Start the stack (once).

        Raises:
            ports.PortTaken: in one line, naming the port and the process that holds it.
        """
        if self._status is None:
            if not stack.status(self.settings).running:
                ports.refuse_taken(self.ports())
            self._status = stack.up(self.settings)
        return self._status

    def ports(self) -> list[tuple[int, str]]:
        s, name = self.settings, self.title
        out = [(s.connect_port, f"{name}'s Spark Connect server"), (s.ui_port, f"{name}'s UI")]
        if s.local_s3:
            out.append((s.s3_port, f"{name}'s S3 server"))
        if s.local_rest:
            out.append((s.rest_port, f"{name}'s REST catalog"))
        if s.workers:
            out.append((s.master_port, f"{name}'s standalone master"))
        return out

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            self.up()
            self._spark = connect(self.settings)
        return self._spark

    @cached_property
    def catalog(self) -> Catalog:
        """PyIceberg's view of the stack's catalog (SQLite needs no server for it)."""
        if self.settings.catalog_type is not CatalogType.SQLITE:
            self.up()
        return open_catalog(self.settings)

    def tables(self, prefix: str = "t") -> Tables:
        """Empty trades, rejects and candle tables in a new namespace."""
        namespace = f"{prefix}_{uuid.uuid4().hex[:12]}"
        ensure_tables(self.catalog, namespace)
        return Tables(self.settings.catalog_name, namespace)

    def given(self, gx_dir: Path | None = None, prefix: str = "t") -> Given:
        """A namespace of a test's own, with settings (and a GX project) pointing at it."""
        tables = self.tables(prefix)
        update: dict[str, object] = {"namespace": tables.namespace}
        if gx_dir is not None:
            update["gx_dir"] = gx_dir
        settings = self.settings.model_copy(update=update)
        return Given(settings, self.spark, self.catalog, tables)

    def down(self) -> None:
        try:
            if self._spark is not None:
                close(self._spark)
        finally:
            self._spark = None
            if self._status is not None:
                stack.down(self.settings)
                self._status = None


@contextmanager
def running(settings: Settings, title: str, start: bool = True) -> Iterator[LocalStack]:
    """A :class:`LocalStack` that is down again when the block ends, however it ends."""
    local = LocalStack(settings, title)
    try:
        if start:
            local.up()
        yield local
    finally:
        local.down()


def session_settings(data_dir: Path) -> Settings:
    """The pytest session's own stack: the embedded shape on ports of the tests."""
    return Settings(
        data_dir=data_dir,
        connect_port=ports.port(15012),
        ui_port=ports.port(14052),
        spark_remote=None,
        server_java_options=SESSION_JAVA_OPTIONS,
    )


def cluster_settings(data_dir: Path) -> Settings:
    """A standalone cluster: a master and two worker processes on loopback."""
    return Settings(
        data_dir=data_dir,
        connect_port=ports.port(15013),
        ui_port=ports.port(14053),
        master_port=ports.port(17077),
        master_ui_port=ports.port(18080),
        workers=2,
        worker_memory="1g",
        driver_memory="2g",
        spark_remote=None,
    )


@contextmanager
def running_shape(name: str, data_dir: Path) -> Iterator[LocalStack]:
    """The stack of shape ``name`` (not the session's SQLite one), up until the block ends."""
    if name == "postgres":
        ports.refuse_taken([(ports.port(15432), "the PostgreSQL shape's database")])
        with running_postgres(ports.port(15432)) as pg:
            settings = Settings(
                data_dir=data_dir,
                connect_port=ports.port(15014),
                ui_port=ports.port(14054),
                catalog_type=CatalogType.POSTGRES,
                catalog_uri=pg.jdbc_url,
                catalog_user=pg.user,
                catalog_password=SecretStr(pg.password),
                spark_remote=None,
            )
            with running(settings, "the PostgreSQL shape") as local:
                yield local
    elif name == "rest_s3":
        settings = Settings(
            data_dir=data_dir,
            connect_port=ports.port(15016),
            ui_port=ports.port(14056),
            s3_port=ports.port(15017),
            rest_port=ports.port(15018),
            catalog_type=CatalogType.REST,
            storage=StorageType.S3,
            spark_remote=None,
        )
        # (stack.up starts the S3 server and REST catalog first, then Spark Connect)
        with running(settings, "the REST + S3 shape") as local:
            yield local
    else:
        raise ValueError(f"no stack shape {name!r}: one of {', '.join(SHAPES)}")


def on_shapes(*names: str) -> pytest.MarkDecorator:
    """Run a test on the stack of each shape named (every shape when none is), through the
    ``shape`` fixture (and ``given``, a namespace of the test's own on it)."""
    return pytest.mark.parametrize("shape", names or SHAPES, indirect=True)
