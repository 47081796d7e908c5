"""Catalog and storage properties: what the settings mean to Spark and to PyIceberg.

Both open one Iceberg catalog: the JDBC catalog on SQLite (WAL mode, a busy timeout, Spark not
creating the catalog tables) or PostgreSQL, or a REST catalog; and one warehouse, a directory
or S3-compatible storage through Iceberg's S3FileIO. :mod:`settings` only reads and types the
environment; this module translates those values into each client's property names.
"""

from __future__ import annotations

from urllib.parse import quote

from settings import CatalogType, Settings


def spark_catalog_conf(settings: Settings) -> dict[str, str]:
    """Spark session settings that register the Iceberg catalog."""
    prefix = f"spark.sql.catalog.{settings.catalog_name}"
    conf = {
        prefix: "org.apache.iceberg.spark.SparkCatalog",
        f"{prefix}.warehouse": settings.warehouse_location,
        # PyIceberg appends behind Spark's back: a cached table would serve a stale snapshot.
        f"{prefix}.cache-enabled": "false",
    }
    conf.update({f"{prefix}.{k}": v for k, v in _s3_properties(settings, spark=True).items()})
    if settings.catalog_type is CatalogType.REST:
        conf[f"{prefix}.type"] = "rest"
        conf[f"{prefix}.uri"] = catalog_uri(settings)
        if token := settings.rest_token():
            conf[f"{prefix}.token"] = token
        return conf
    conf[f"{prefix}.type"] = "jdbc"
    if settings.catalog_type is CatalogType.SQLITE:
        conf[f"{prefix}.uri"] = f"jdbc:sqlite:{settings.sqlite_path}"
        # With the default (true) the JVM holds a SQLite read lock for its whole life and
        # every PyIceberg commit fails with "database is locked". PyIceberg creates the tables.
        conf[f"{prefix}.jdbc.init-catalog-tables"] = "false"
        conf[f"{prefix}.jdbc.busy_timeout"] = "30000"
        conf[f"{prefix}.jdbc.journal_mode"] = "WAL"
    else:
        conf[f"{prefix}.uri"] = catalog_uri(settings)
    if settings.catalog_user:
        conf[f"{prefix}.jdbc.user"] = settings.catalog_user
    if settings.catalog_password:
        conf[f"{prefix}.jdbc.password"] = settings.catalog_password.get_secret_value()
    return conf


def pyiceberg_catalog_properties(settings: Settings) -> dict[str, str]:
    """Properties for ``pyiceberg.catalog.load_catalog`` that open the same catalog."""
    props = {"warehouse": settings.warehouse_location, **_s3_properties(settings, spark=False)}
    if settings.catalog_type is CatalogType.REST:
        props.update(type="rest", uri=catalog_uri(settings))
        if token := settings.rest_token():
            props["token"] = token
        return props
    props["type"] = "sql"
    if settings.catalog_type is CatalogType.SQLITE:
        props["uri"] = f"sqlite:///{settings.sqlite_path}?timeout=30"
        return props
    jdbc = catalog_uri(settings)
    if not jdbc.startswith("jdbc:postgresql://"):
        raise ValueError(
            f"OHLCV_CATALOG_URI={jdbc!r} is not a PostgreSQL JDBC URL: "
            "use jdbc:postgresql://host:5432/database"
        )
    user = quote(settings.catalog_user or "", safe="")
    password = (
        quote(settings.catalog_password.get_secret_value(), safe="")
        if settings.catalog_password
        else ""
    )
    auth = f"{user}:{password}@" if user else ""
    props["uri"] = f"postgresql+psycopg2://{auth}{jdbc.removeprefix('jdbc:postgresql://')}"
    return props


def iceberg_io_properties(settings: Settings) -> dict[str, str]:
    """Java Iceberg FileIO properties (S3FileIO) of the warehouse; empty for a directory."""
    return _s3_properties(settings, spark=True)


def _s3_properties(settings: Settings, *, spark: bool) -> dict[str, str]:
    """Iceberg FileIO properties for S3-compatible storage (empty without an endpoint)."""
    if not settings.uses_s3:
        return {}
    props = {
        "s3.endpoint": settings.s3_endpoint_url,
        "s3.path-style-access": str(settings.s3_path_style_access).lower(),
    }
    if spark:
        props["io-impl"] = "org.apache.iceberg.aws.s3.S3FileIO"
        props["client.region"] = settings.s3_region
    else:
        props["s3.region"] = settings.s3_region
    credentials = settings.s3_credentials()
    if credentials:
        props["s3.access-key-id"], props["s3.secret-access-key"] = credentials
    elif settings.s3_access_key_id:
        props["s3.access-key-id"] = settings.s3_access_key_id
    return props


def catalog_uri(settings: Settings) -> str:
    """The catalog's JDBC or REST URL: the setting, or the local REST catalog's."""
    if settings.local_rest:
        return f"http://127.0.0.1:{settings.rest_port}"
    if not settings.catalog_uri:
        raise ValueError(
            f"OHLCV_CATALOG_TYPE={settings.catalog_type.value} needs OHLCV_CATALOG_URI "
            "(the catalog's JDBC or REST URL)"
        )
    return settings.catalog_uri
