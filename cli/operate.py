"""Operating the Prefect way: `deploy` (to the work pool) and `alerts apply`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

from cli import output
from cli.app import app, settings_of
from cli.errors import friendly_errors
from cli.output import console
from infra import prefect_server

T = TypeVar("T")

alerts_app = typer.Typer(
    help="The pipeline's alerts: Prefect automations that notify OHLCV_ALERT_WEBHOOK.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(alerts_app, name="alerts")


@app.command("deploy")
@friendly_errors
def deploy_command(ctx: typer.Context) -> None:
    """Deploy every scheduled deployment of prefect.yaml to the work pool `ohlcv` (created if
    missing); run them with `prefect worker start --pool ohlcv`."""
    from flows.deployments import POOL, deploy

    settings = settings_of(ctx)
    url = prefect_server.api_url(settings)
    with console.status("deploying prefect.yaml ..."):
        names = deploy(url)
    for name in names:
        console.print(f"deployed {name} to work pool '{POOL}'")
    from flows.automations import apply_automations
    from flows.deployments import deployments

    output.print_automations(_with_api(url, lambda: apply_automations(settings, deployments())))
    console.print(f"next: PREFECT_API_URL={url} uv run prefect worker start --pool {POOL}")


@alerts_app.command("apply")
@friendly_errors
def alerts_apply_command(ctx: typer.Context) -> None:
    """Create or update the alert automations (idempotent); needs OHLCV_ALERT_WEBHOOK."""
    from flows.automations import apply_automations
    from flows.deployments import deployments

    settings = settings_of(ctx)
    if settings.alert_webhook is None:
        raise ValueError(
            "OHLCV_ALERT_WEBHOOK is not set: set it to a Slack-compatible incoming-webhook URL"
        )
    url = prefect_server.api_url(settings)
    output.print_automations(_with_api(url, lambda: apply_automations(settings, deployments())))


def _with_api(url: str, call: Callable[[], T]) -> T:
    """``call()`` against the Prefect API at ``url``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return call()
