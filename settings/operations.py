"""Settings of operating the pipeline the Prefect way: Prefect's history, the automations and
the writer slots (:mod:`flows.prefect_history`, :mod:`flows.automations`, :mod:`flows.writers`).
Part of :class:`settings.Settings`."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperationsSettings(BaseSettings):
    """``OHLCV_*`` settings of Prefect's history, the automations and the writer slots."""

    model_config = SettingsConfigDict(env_prefix="OHLCV_", extra="ignore", populate_by_name=True)

    prefect_delete_batch: int = Field(
        default=500,
        ge=1,
        description="How many old flow runs one maintenance run deletes at most (the rest go "
        "in the next runs).",
    )
    zombie_after_s: float = Field(
        default=90.0,
        ge=45,
        description="A flow run of ours that sent no heartbeat for this long (they come every "
        "30 s) and did not end, or that was taken (Pending) and did not start Running within "
        "it, is set Crashed by an automation, freeing its deployment's slot.",
    )
    alert_webhook: SecretStr | None = Field(
        default=None,
        description="A Slack-compatible incoming-webhook URL: `ohlcv alerts apply` (and "
        "`deploy`, `serve`) point the pipeline's Prefect automations at it.",
    )
    alert_gap_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Alert when a run's gap report finds more than this share of its windows "
        "without trades.",
    )
    alert_stale_1m_s: float = Field(
        default=1800.0,
        ge=10,
        description="Alert when no 1m candles were published for this long (a proactive "
        "Prefect automation).",
    )

    # One writer per table (a lease on a Prefect global concurrency limit)
    writer_wait_s: float = Field(
        default=600.0,
        ge=0,
        description="How long a writer waits for another writer of the same table.",
    )
    writer_lease_s: float = Field(
        default=60.0,
        ge=60,
        description="Lease of a writer's slot, renewed while it runs: a crashed writer's slot "
        "is free again after at most this long (Prefect's minimum is 60 s).",
    )
