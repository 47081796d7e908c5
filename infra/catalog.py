"""PyIceberg access to the same Iceberg catalog the Spark Connect server uses."""

from __future__ import annotations

import os
import sqlite3

from pyiceberg.catalog import Catalog, load_catalog

from infra.catalog_properties import pyiceberg_catalog_properties
from settings import CatalogType, Settings


def prepare_sqlite(settings: Settings) -> None:
    """Create the SQLite catalog file in WAL mode so Spark and PyIceberg can share it."""
    path = settings.sqlite_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=30) as db:
        # WAL is a property of the file: set once, every later connection uses it.
        db.execute("PRAGMA journal_mode=WAL")
    if settings.warehouse is None and not settings.uses_s3:
        (settings.data_dir.resolve() / "warehouse").mkdir(parents=True, exist_ok=True)


def use_sdk_defaults_of_the_local_s3_server(settings: Settings) -> None:
    """PyIceberg writes through pyarrow's AWS SDK, which reads its checksum behaviour from the
    environment only: with the local S3 server, ask it for checksums only where S3 requires
    them (see :data:`infra.object_store.SDK_ENV`). A value already set wins."""
    if settings.local_s3:
        from infra.object_store import SDK_ENV

        for key, value in SDK_ENV.items():
            os.environ.setdefault(key, value)


def open_catalog(settings: Settings) -> Catalog:
    """Open the configured catalog with PyIceberg; for SQLite, create its tables if missing."""
    if settings.catalog_type is CatalogType.SQLITE:
        prepare_sqlite(settings)
    use_sdk_defaults_of_the_local_s3_server(settings)
    # PyIceberg's SqlCatalog creates its catalog tables (the schema Spark's JdbcCatalog reads).
    return load_catalog(settings.catalog_name, **pyiceberg_catalog_properties(settings))
