"""How `make test` shares the suite between its two pytest-xdist workers.

A group of tests runs on one worker: the tests of one module (they share its module fixtures:
a cluster, a Prefect server, a story of trades), those of one catalog shape (they share its
stack, started once), and each test of :data:`SPLIT_MODULES` alone. Groups go to the first
free worker, the longest first (:data:`SLOW_GROUPS`), so none is left running alone at the end.

pytest-xdist's own ``--dist loadgroup`` cannot do this with pytest 9.2: it tags each test by
rewriting ``item._nodeid``, which pytest no longer reads (measured: the tests of one module ran
on both workers, each starting the module's servers). So :class:`GroupScheduling` computes the
group from the test's id in the controller, through xdist's scheduler hook.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadScopeScheduling

from tests.support.stacks import SHAPES

SPLIT_MODULES = {"tests/test_faults.py"}
"""Modules whose tests are groups of their own: each starts the servers it kills, so sharing a
worker saves nothing, and together they would be the longest group of the suite."""

SLOW_GROUPS = {
    "tests/test_rollup.py": 10,
    "shape rest_s3": 7,
    "tests/test_prefect_ops.py": 6.5,
    "tests/test_maintenance.py": 6,
    "shape postgres": 5.5,
    "tests/test_cluster.py": 5,
    "tests/test_faults.py::test_killing_the_server": 5,
    "tests/test_calendars.py": 5,
    "tests/test_faults.py::test_a_command_whose_server_is_killed": 4,
    "tests/test_flows.py": 3.5,
    "tests/test_faults.py::test_a_writer_killed": 3,
    "tests/test_stack.py": 2.3,
    "tests/test_expectations.py": 2.2,
    "tests/test_faults.py::test_a_signal_ends": 2,
    "tests/test_candles.py": 1.6,
    "tests/test_wap.py": 1.5,
    "tests/test_trade_ids.py": 1.5,
    "tests/test_cleanup.py": 1.4,
    "tests/test_landing.py": 1.3,
    "tests/test_cli_quiet.py": 1.2,
    "tests/test_classic_session.py": 0.9,
}
"""Rough minutes of the longest groups (a full run on 2 cores, 2026-12-07, at load 6-12), by the
start of the group's name (the longest that matches); the rest follow in collection order."""


def shape_of(nodeid: str) -> str | None:
    """The catalog shape a test runs on, from its parameters' ids (None: not a shape test)."""
    if not nodeid.endswith("]"):
        return None
    params = nodeid.rsplit("[", 1)[1][:-1].split("-")
    return next((p for p in params if p in SHAPES), None)


def group_of(nodeid: str) -> str:
    """The group of the test ``nodeid`` (see the module docstring)."""
    shape = shape_of(nodeid)
    if shape in SHAPES[1:]:
        return f"shape {shape}"
    module = nodeid.split("::")[0]
    return nodeid if module in SPLIT_MODULES else module


def weight(nodeid: str) -> float:
    """The rough minutes of the test's group, to order the groups longest first."""
    group = group_of(nodeid)
    matches = [prefix for prefix in SLOW_GROUPS if group.startswith(prefix)]
    return SLOW_GROUPS[max(matches, key=len)] if matches else 0


class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """xdist's scheduling by scope, the scope being :func:`group_of`, in collection order
    (``--no-loadscope-reorder``: the workers sorted it by :func:`weight`).

    A worker gets its next group only when it is down to the one test it holds back (a worker
    runs a test once it knows the next, for fixture teardown), not two ahead as xdist does:
    with groups of minutes, a group queued behind a busy worker would wait while the other
    worker idles.
    """

    def _split_scope(self, nodeid: str) -> str:
        return group_of(nodeid)

    def _reschedule(self, node: Any) -> None:
        if node.shutting_down:
            return
        if not self.workqueue:
            node.shutdown()
            return
        if self._pending_of(self.assigned_work[node]) > 1:
            return
        self._assign_work_unit(node)
