"""What a Spark Connect server did, from its monitoring API (the tests' measure of reads)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any, cast


def stages(ui_port: int) -> list[dict[str, Any]]:
    """The Spark stages the server ran so far."""
    base = f"http://127.0.0.1:{ui_port}/api/v1/applications"
    with urllib.request.urlopen(base, timeout=30) as response:
        app = json.load(response)[0]["id"]
    with urllib.request.urlopen(f"{base}/{app}/stages", timeout=30) as response:
        return cast(list[dict[str, Any]], json.load(response))


def records_read(ui_port: int, run: Callable[[], object]) -> int:
    """Rows the server read from tables (its stages' input records) while ``run`` ran."""
    seen = {(s["stageId"], s["attemptId"]) for s in stages(ui_port)}
    run()
    new = [s for s in stages(ui_port) if (s["stageId"], s["attemptId"]) not in seen]
    return sum(int(s["inputRecords"]) for s in new)


def _sql_ids(ui_port: int) -> set[int]:
    base = f"http://127.0.0.1:{ui_port}/api/v1/applications"
    with urllib.request.urlopen(base, timeout=30) as response:
        app = json.load(response)[0]["id"]
    url = f"{base}/{app}/sql?details=false&length=1000000"
    with urllib.request.urlopen(url, timeout=60) as response:
        return {int(e["id"]) for e in json.load(response)}


def queries_run(ui_port: int, run: Callable[[], object]) -> int:
    """SQL executions (queries) the server ran while ``run`` ran."""
    seen = _sql_ids(ui_port)
    run()
    return len(_sql_ids(ui_port) - seen)
