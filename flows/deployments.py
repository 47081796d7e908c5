"""Every scheduled deployment, in one list: what `ohlcv serve` serves, what `prefect.yaml`
declares for the ``ohlcv`` work pool, and `ohlcv deploy`.

The schedules come from :data:`core.timeframes.TIMEFRAMES` (and the maintenance and trades
ingest flows' ``CRON``); ``prefect.yaml`` repeats them in Prefect's format, and a test fails
when an entry there disagrees with :func:`deployments`. Adding a deployment is one entry in
each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from flows.automations import HEARTBEAT_S
from infra.processes import StackError

POOL = "ohlcv"
"""The process work pool `ohlcv deploy` deploys to (prefect.yaml names it too)."""
JOB_VARIABLES = {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}}
"""What every flow run of the pool gets (prefect.yaml says the same): heartbeats every 30 s, so
a run whose process died is found (:mod:`flows.automations`)."""
ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"
DEPLOY_TIMEOUT_S = 600.0


class DeployFailed(StackError):
    """`prefect deploy` did not deploy every deployment."""


def deployments() -> list[Any]:
    """Every scheduled deployment (Prefect ``RunnerDeployment``s), as `ohlcv serve` runs them."""
    from flows.candle_flows import deployments as candle_deployments
    from flows.maintenance import maintenance_deployment
    from flows.trades_ingest import ingest_deployment

    return [*candle_deployments(), maintenance_deployment(), ingest_deployment()]


def ensure_pool(api_url: str) -> bool:
    """Create the process work pool ``ohlcv`` unless it exists; True when created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        try:
            client.read_work_pool(POOL)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
            return True


def deploy(api_url: str) -> list[str]:
    """Deploy every entry of prefect.yaml to the Prefect server at ``api_url`` (what `prefect
    --no-prompt deploy --all` does, run from the repository's root so that flow runs load the
    code from this checkout); the deployments' names.

    Raises:
        DeployFailed: with the end of Prefect's own output.
    """
    ensure_pool(api_url)
    env = {**os.environ, "PREFECT_API_URL": api_url}
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    command += ["--prefect-file", str(PREFECT_YAML)]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEPLOY_TIMEOUT_S,
        check=False,
    )
    names = [d.name for d in deployments()]
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise DeployFailed(f"`prefect deploy --all` failed (exit {done.returncode}): {tail}")
    return names
