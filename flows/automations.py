"""The pipeline's Prefect automations, as code: alerts to a webhook, and dead runs crashed.

Applied by `ohlcv deploy` and `ohlcv serve` (and `ohlcv alerts apply`), created or updated by
name, idempotently, on the Prefect server's own triggers service:

- **zombie runs crashed**, always: a flow run whose process died (kill -9, a lost machine)
  stays ``Running`` for good and keeps its deployment's concurrency slot for up to 300 s
  (Prefect's engine renews that lease for 300 s at a time; PrefectHQ/prefect#16746). Flow
  runs send a heartbeat every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (30 s under `ohlcv serve`
  and in prefect.yaml); a run of ours that sent none for ``OHLCV_ZOMBIE_AFTER_S`` and did not
  end is set ``Crashed``, which frees its deployment's slot (its writer slot is a lease of its
  own, free within ``OHLCV_WRITER_LEASE_S``), and the alert below says so;
- **runs that never started crashed**, always: a run goes ``Pending`` (then ``Submitting``)
  when a worker or `ohlcv serve` takes it, which takes its deployment's slot, and ``Running``
  once its process starts. One whose taker died in between (kill -9 of `serve`) sends no
  heartbeat ever, so the zombie trigger never arms; measured in the chaos bench, four such runs
  held their deployments' slots to the end. A run of ours that is not ``Running`` (or ended)
  ``OHLCV_ZOMBIE_AFTER_S`` after it went ``Pending`` is set ``Crashed``, freeing the slot.

With ``OHLCV_ALERT_WEBHOOK`` (a Slack-compatible incoming webhook; a notification block holds
the URL as a secret), four alerts:

- a run of a scheduled flow (the candle flows, maintenance, and any deployment added to
  :func:`flows.deployments.deployments`) failed or crashed;
- a validation blocked publication (the flow's ``ohlcv.validation.failed`` event: the table,
  the failed expectations, the rejected snapshot's tag);
- a gap report found more than ``OHLCV_ALERT_GAP_SHARE`` of its windows empty
  (``ohlcv.gaps.exceeded``, with the share);
- no 1m candles were published for ``OHLCV_ALERT_STALE_1M_S`` (a proactive trigger on the
  ``ohlcv.candles.published`` events: it fires when, after one, no other follows in time).

Each message links the flow run (the stale-1m one: the flow runs page). Applying again changes
nothing that is already as declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.settings import PREFECT_API_URL

from flows import events
from settings import Settings

BLOCK_NAME = "ohlcv-alert-webhook"
PREFIX = "ohlcv: "
FAILED = f"{PREFIX}flow run failed or crashed"
VALIDATION = f"{PREFIX}validation blocked publication"
GAPS = f"{PREFIX}gap report over threshold"
STALE = f"{PREFIX}no 1m publication"
ZOMBIE = f"{PREFIX}zombie flow run crashed"
NEVER_STARTED = f"{PREFIX}flow run that never started crashed"
HEARTBEAT_S = 30
"""The flow run heartbeat `ohlcv serve` and prefect.yaml ask for (Prefect's minimum; its
default is 180 s)."""
ENDED = ("Completed", "Failed", "Cancelled", "Crashed")


@dataclass(frozen=True)
class Applied:
    name: str
    action: str  # created, updated or unchanged


def _ui(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")


def _crash_silent_runs(
    settings: Settings,
    flow_names: list[str],
    name: str,
    description: str,
    after: set[str],
    expect: set[str],
    why: str,
) -> AutomationCore:
    """Set ``Crashed`` a run of ours that, after one of the ``after`` events, sent none of the
    ``expect`` events (nor ended) within ``OHLCV_ZOMBIE_AFTER_S``."""
    return AutomationCore(
        name=name,
        description=description,
        trigger=EventTrigger(
            after=after,
            expect={*expect, *(f"prefect.flow-run.{s}" for s in ENDED)},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": flow_names},  # type: ignore[dict-item]
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=settings.zombie_after_s),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed",
                state=StateType.CRASHED,
                force=False,
                message=f"{why} within {settings.zombie_after_s:.0f} s (OHLCV_ZOMBIE_AFTER_S)",
            )
        ],
    )


def zombie_automation(settings: Settings, flow_names: list[str]) -> AutomationCore:
    """Set ``Crashed`` a run of ours that stopped sending heartbeats without ending."""
    return _crash_silent_runs(
        settings,
        flow_names,
        ZOMBIE,
        "A flow run that stopped sending heartbeats without ending is crashed, which frees "
        "its deployment's concurrency slot.",
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat"},
        why="no heartbeat (its process is gone)",
    )


def never_started_automation(settings: Settings, flow_names: list[str]) -> AutomationCore:
    """Set ``Crashed`` a run of ours taken (``Pending``) whose process never started."""
    return _crash_silent_runs(
        settings,
        flow_names,
        NEVER_STARTED,
        "A flow run that was taken (Pending, Submitting) but never started Running is "
        "crashed, which frees its deployment's concurrency slot.",
        after={"prefect.flow-run.Pending", "prefect.flow-run.Submitting"},
        expect={"prefect.flow-run.Running"},
        why="taken but not started (the worker or `ohlcv serve` that took it is gone)",
    )


def automations(settings: Settings, flow_names: list[str], block_id: Any) -> list[AutomationCore]:
    """The four alerts, as declared (see the module docstring)."""
    ui = _ui(str(PREFECT_API_URL.value()))
    run_link = ui + "/runs/flow-run/{{ flow_run.id }}"

    def notify(subject: str, body: str) -> list[Any]:
        return [SendNotification(block_document_id=block_id, subject=subject, body=body)]

    def on(event: str, name: str, description: str, subject: str, body: str) -> AutomationCore:
        """Notify on each of the pipeline's ``event``."""
        return AutomationCore(
            name=name,
            description=description,
            trigger=EventTrigger(
                expect={event},
                match={"prefect.resource.id": f"{events.TABLE_RESOURCE}*"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=notify(subject, body),
        )

    stale = timedelta(seconds=settings.alert_stale_1m_s)
    return [
        AutomationCore(
            name=FAILED,
            description="A run of a scheduled OHLCV flow failed or crashed.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": flow_names,
                },  # type: ignore[dict-item]
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=notify(
                "OHLCV: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}",
                "{{ flow.name }}: flow run {{ flow_run.name }} is {{ flow_run.state.name }} "
                "({{ flow_run.state.message }}). Full traceback: `prefect flow-run logs "
                "{{ flow_run.id }}`. " + run_link,
            ),
        ),
        on(
            events.VALIDATION_FAILED,
            VALIDATION,
            "A GX validation blocked the publication of candles.",
            "OHLCV: validation blocked {{ event.payload.table }}",
            "Validation blocked publication of {{ event.payload.table }} (main unchanged). "
            "Failed: {{ event.payload.failed_expectations | join('; ') }}. Rejected "
            "candles kept as tag {{ event.payload.rejected_tag }}. " + run_link,
        ),
        on(
            events.GAPS_EXCEEDED,
            GAPS,
            "A gap report found more empty windows than OHLCV_ALERT_GAP_SHARE.",
            "OHLCV: gaps in {{ event.payload.table }}",
            "{{ event.payload.table }}: {{ event.payload.empty_windows }} of "
            "{{ event.payload.windows }} windows without trades (share "
            "{{ event.payload.share }} > {{ event.payload.threshold }}). " + run_link,
        ),
        AutomationCore(
            name=STALE,
            description="No 1m candles were published for OHLCV_ALERT_STALE_1M_S.",
            trigger=EventTrigger(
                after={events.PUBLISHED},
                expect={events.PUBLISHED},
                match={
                    "prefect.resource.id": f"{events.TABLE_RESOURCE}*",
                    events.TIMEFRAME_LABEL: "1m",
                },
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=stale,
            ),
            actions=notify(
                "OHLCV: no 1m publication",
                f"No 1m candles were published for {stale.total_seconds():.0f} s "
                "(OHLCV_ALERT_STALE_1M_S): is the 1m deployment running? Flow runs: "
                f"{ui}/runs",
            ),
        ),
    ]


def _block(settings: Settings) -> Any:
    """Save the webhook block unless it is saved as is; its document id."""
    assert settings.alert_webhook is not None
    url = settings.alert_webhook.get_secret_value()
    try:
        saved: Any = CustomWebhookNotificationBlock.load(BLOCK_NAME)
        if saved.secrets.get_secret_value().get("url") == url:
            return saved._block_document_id
    except ValueError:  # not saved yet
        pass
    block = CustomWebhookNotificationBlock(  # type: ignore[call-arg]
        name="ohlcv",
        url="{{url}}",
        json_data={"text": "{{subject}}\n{{body}}"},
        secrets={"url": url},  # type: ignore[arg-type]
    )
    block.save(BLOCK_NAME, overwrite=True)
    return block._block_document_id


def _declared(automation: AutomationCore) -> dict[str, Any]:
    """What an automation is, without what the server adds (its id); the trigger's sets of
    events sorted (a set's order is not kept)."""
    declared = automation.model_dump(mode="json", include=set(AutomationCore.model_fields))
    for name in ("after", "expect", "for_each"):
        declared["trigger"][name] = sorted(declared["trigger"][name])
    return declared


def apply_automations(settings: Settings, deployments: list[Any]) -> list[Applied]:
    """Create or update the automations on the current Prefect API (idempotent): the two
    that crash dead runs always, the alerts when ``OHLCV_ALERT_WEBHOOK`` is set."""
    flow_names = sorted({d.flow_name for d in deployments})
    wanted = [
        zombie_automation(settings, flow_names),
        never_started_automation(settings, flow_names),
    ]
    if settings.alert_webhook is not None:
        wanted += automations(settings, flow_names, _block(settings))
    applied = []
    with get_client(sync_client=True) as client:
        for automation in wanted:
            found = client.read_automations_by_name(automation.name)
            if not found:
                client.create_automation(automation)
                applied.append(Applied(automation.name, "created"))
            elif _declared(found[0]) == _declared(automation):
                applied.append(Applied(automation.name, "unchanged"))
            else:
                client.update_automation(found[0].id, automation)
                applied.append(Applied(automation.name, "updated"))
    return applied
