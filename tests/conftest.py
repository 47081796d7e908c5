"""Fixtures and hooks; what they are built of lives in ``tests/support`` (tests import it from
there, never from this file).

Tiers by marker (registered in pyproject.toml), derived here from the fixtures a test uses:

- ``spark``: needs a Spark Connect server (the session's, or a stack of its own);
- ``jvm``: starts a JVM of its own without a Connect server (a classic session, a resolver);
- ``stack``: starts servers beyond the session's one: a cluster, another catalog shape, a
  server to kill, a Prefect server with services.

``make test-fast`` runs ``not (spark or jvm or stack)``, ``make test-core`` ``not (jvm or
stack)`` (the session's one server), ``make test`` everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.catalog import Catalog
from pyspark.sql import SparkSession

from core.tables import Tables
from infra import stack
from settings import Settings
from tests.support import cleanup, groups, ports, stacks
from tests.support.environment import SUITE_ENVIRONMENT, environment_keys, export_settings
from tests.support.prefect import harness
from tests.support.stacks import LocalStack

# Fixtures that start (or are) a Spark Connect server, and those that start more than the
# session's one; a test using one is marked `spark`, resp. `stack`.
SERVER_FIXTURES = {"server", "cluster", "shape"}
STACK_FIXTURES = {"cluster", "prefect_server"}  # (test_prefect_ops has one too)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test`'s ``--dist loadgroup``: the groups of :mod:`tests.support.groups`."""
    if config.getvalue("dist") == "loadgroup":
        return groups.GroupScheduling(config, log)
    return None


def pytest_configure(config: pytest.Config) -> None:
    cleanup.configure(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    cleanup.unconfigure(config)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Iterator[None]:
    # Markers first (-m selects on them), order last (after pytest grouped each shape's tests)
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        shape = _shape(item)
        if "shape" in used and shape == "sqlite":
            used = (used - {"shape"}) | ({"server"} if _needs_spark(item) else set())
        if SERVER_FIXTURES & used:
            item.add_marker(pytest.mark.spark)
        if STACK_FIXTURES & used or shape in stacks.SHAPES[1:]:
            item.add_marker(pytest.mark.stack)
    yield
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Under `make test` the groups go to the first free worker in this order: the longest
        # first, so none is left running alone at the end (tests/support/groups.py)
        items.sort(key=lambda item: -groups.weight(item.nodeid))
        return
    # The tests of the session's server first, then those that start more, the other shapes
    # last (one shape's stack is stopped when the next one's starts; the last one's at the end)
    items.sort(key=_stack_order)


def _shape(item: pytest.Item) -> str | None:
    return getattr(getattr(item, "callspec", None), "params", {}).get("shape")


def _stack_order(item: pytest.Item) -> int:
    shape = _shape(item)
    if shape in stacks.SHAPES[1:]:
        return 1 + stacks.SHAPES.index(shape)
    return 1 if item.get_closest_marker("stack") else 0


def _needs_spark(item: pytest.Item) -> bool:
    """A test on the SQLite shape needs the session's server unless it asks for PyIceberg
    only (``@pytest.mark.pyiceberg_only``)."""
    return item.get_closest_marker("pyiceberg_only") is None


@pytest.fixture(scope="session", autouse=True)
def _clean_session_environment() -> Iterator[None]:
    """No exported OHLCV_* or SPARK_REMOTE may change what a test sees (session fixtures too),
    beyond the suite's own environment (``SUITE_ENVIRONMENT``)."""
    with pytest.MonkeyPatch.context() as patch:
        for key in environment_keys():
            patch.delenv(key)
        for key, value in SUITE_ENVIRONMENT.items():
            patch.setenv(key, value)
        yield


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for each test: what one test exports does not leak into the next."""
    for key in environment_keys():
        monkeypatch.delenv(key)
    for key, value in SUITE_ENVIRONMENT.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session", autouse=True)
def _wide_console() -> None:
    """The CLI's console 250 columns wide in every test. Rich fixes a console's width when it is
    made if COLUMNS is set then, so which test first imported the CLI (under xdist: any) decided
    whether a table was cut; a CliRunner's COLUMNS came too late."""
    from cli import output

    output.console.width = 250


@pytest.fixture(scope="session")
def session_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The session's stack (started by the first test that needs its server)."""
    settings = stacks.session_settings(tmp_path_factory.mktemp("ohlcv"))
    with stacks.running(settings, "the test session", start=False) as local:
        yield local


@pytest.fixture(scope="session")
def settings(session_stack: LocalStack) -> Settings:
    return session_stack.settings


@pytest.fixture(scope="session")
def prefect() -> Iterator[None]:
    """One Prefect test server for the whole session."""
    with harness():
        yield


@pytest.fixture(scope="session")
def server(session_stack: LocalStack) -> stack.StackStatus:
    """The session's Spark Connect server; a port held by something else ends the session in
    one line (every test after would fail on it)."""
    try:
        return session_stack.up()
    except ports.PortTaken as taken:
        pytest.exit(str(taken), returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def spark(server: stack.StackStatus, session_stack: LocalStack) -> SparkSession:
    return session_stack.spark


@pytest.fixture(scope="session")
def catalog(session_stack: LocalStack) -> Catalog:
    return session_stack.catalog


@pytest.fixture
def tables(session_stack: LocalStack, server: stack.StackStatus) -> Tables:
    """Empty trades, rejects and candle tables in a namespace of this test's own."""
    return session_stack.tables()


@pytest.fixture
def run_settings(settings: Settings, tables: Tables, tmp_path: Path) -> Settings:
    """Settings of this test's namespace, with a GX project (results, data docs) of its own."""
    return settings.model_copy(update={"namespace": tables.namespace, "gx_dir": tmp_path / "gx"})


@pytest.fixture
def flow_env(prefect: None, run_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Point the flows' own Settings() at this test's server, namespace and GX project."""
    export_settings(
        monkeypatch, run_settings, generate_retry_delay_s="0", validate_retry_delay_s="0"
    )
    return Settings()


@pytest.fixture(scope="session")
def shape(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """The stack of one catalog shape (``stacks.SHAPES``), parametrized indirectly.

    One stack per shape and session: pytest groups the tests of a shape together and stops a
    shape's stack before it starts the next one's. The SQLite shape is the session's stack.
    """
    name = request.param
    if name == "sqlite":
        yield request.getfixturevalue("session_stack")
        return
    try:
        with stacks.running_shape(name, tmp_path_factory.mktemp(name)) as local:
            yield local
    except ports.PortTaken as taken:
        pytest.fail(str(taken), pytrace=False)


@pytest.fixture
def given(shape: LocalStack, tmp_path: Path) -> stacks.Given:
    """Empty tables in a namespace of this test's own on ``shape``'s stack."""
    return shape.given(gx_dir=tmp_path / "gx")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A standalone cluster (a master, two workers) behind a Connect server of its own."""
    try:
        with stacks.running(
            stacks.cluster_settings(tmp_path_factory.mktemp("cluster")), "the cluster"
        ) as local:
            yield local
    except ports.PortTaken as taken:
        pytest.fail(str(taken), pytrace=False)
