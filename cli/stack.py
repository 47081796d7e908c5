"""`ohlcv stack up|down|status` and `ohlcv setup`: the local servers and their artifacts."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import output
from cli.app import app, settings_of, stack_app
from cli.errors import friendly_errors
from cli.output import console
from cli.requires import prepare_tables
from infra import prefect_server, spark_server, stack
from settings import CatalogType, Settings, StorageType


def start_stack(settings: Settings) -> None:
    """Start the four local servers (and the project's tables) and say where they run."""
    started = stack.start(
        settings,
        prepare=prepare_tables,
        starting=lambda title: console.status(f"starting the {title} ..."),
    )
    output.print_started(started)


@stack_app.command("up")
@friendly_errors
def stack_up(
    ctx: typer.Context,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Also start a standalone master and N workers on loopback for the server "
            "(default: OHLCV_WORKERS, 0 = local mode)"
        ),
    ] = None,
    catalog: Annotated[
        CatalogType | None,
        typer.Option(
            help="The Iceberg catalog (default: OHLCV_CATALOG_TYPE); rest without "
            "OHLCV_CATALOG_URI also starts a local REST catalog"
        ),
    ] = None,
    storage: Annotated[
        StorageType | None,
        typer.Option(
            help="The warehouse (default: OHLCV_STORAGE); s3 without OHLCV_S3_ENDPOINT also "
            "starts a local S3 server"
        ),
    ] = None,
) -> None:
    """Start the local Spark Connect and Prefect servers (reuses running ones)."""
    settings = settings_of(ctx)
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    chosen = {"catalog_type": catalog, "storage": storage}
    settings = settings.model_copy(update={k: v for k, v in chosen.items() if v is not None})
    start_stack(settings)
    if catalog is not None or storage is not None:
        output.print_shape(settings)
    output.print_cluster(settings, spark_server.cluster_pids(settings)["workers"])


@stack_app.command("down")
@friendly_errors
def stack_down(ctx: typer.Context) -> None:
    """Stop the local Spark Connect and Prefect servers."""
    spark, shown, prefect = stack.stop(settings_of(ctx))
    console.print(f"Spark Connect {spark.describe()}")
    output.print_storage_and_catalog(shown)
    console.print(f"Prefect {prefect.describe()}")


@stack_app.command("status")
@friendly_errors
def stack_status(ctx: typer.Context) -> None:
    """Show whether the local servers run, their URLs and log files."""
    settings = settings_of(ctx)
    output.print_storage_and_catalog(stack.storage_and_catalog(settings))
    console.print(f"Spark Connect {stack.status(settings).describe()}")
    console.print(f"Prefect {prefect_server.status(settings).describe()}")


@app.command()
@friendly_errors
def setup(
    ctx: typer.Context,
    all_shapes: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also fetch the local S3 server's and REST catalog's jars (about 200 MB), "
            "whatever the settings use",
        ),
    ] = False,
) -> None:
    """Fetch the pinned JVM artifacts the configured stack uses (done by `stack up` too)."""
    from infra.artifacts import (
        REST_CATALOG_JARS,
        S3PROXY_JARS,
        ensure_artifacts,
        ensure_jar_set,
        server_artifacts,
    )

    settings = settings_of(ctx)
    cache = settings.jar_cache_dir
    for path in ensure_artifacts(cache, server_artifacts(s3=all_shapes or settings.uses_s3)):
        console.print(f"ok {path}")
    wanted = [(S3PROXY_JARS, settings.local_s3), (REST_CATALOG_JARS, settings.local_rest)]
    for jar_set, used in wanted:  # the local S3 server's and REST catalog's classpaths
        if all_shapes or used:
            jars = ensure_jar_set(cache, jar_set)
            console.print(f"ok {jar_set.name}: {len(jars)} jars in {jars[0].parent}")
