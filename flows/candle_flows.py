"""The five OHLCV flows: one implementation, parametrised by timeframe.

Each flow run opens one Spark Connect session tagged ``ohlcv-<flow run id>``, runs
generate -> validate -> publish as Prefect tasks, records its metrics and validation summary as
artifacts, and closes the session in all cases. The five flows users know by name
(``ohlcv_1m_flow`` ... ``ohlcv_1d_flow``) and their schedules come from the one table of
timeframes (:data:`core.timeframes.TIMEFRAMES`), not copies. The sequence of steps is
:func:`flows.pipeline.run_pipeline`; this module only supplies the tasks that run each step.

Prefect's task timeout stops only the client. Every Spark call of a task therefore runs under
:func:`interruptible`, which on timeout, cancellation or any other interruption calls
``interruptTag`` for the run's tag, so no MERGE keeps running on the server and commits later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from prefect import Flow, flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron
from prefect.states import State
from pyspark.sql import SparkSession

from core.ranges import Range
from core.time import assume_utc
from core.timeframes import TIMEFRAMES, Timeframe
from expectations.frames import GAP_COLUMNS
from expectations.validation import ValidationFailed
from flows import events, pipeline
from flows.pipeline import RunRequest
from flows.results import RunMetrics, Validation
from flows.stopping import ends_within_grace
from flows.writers import one_writer
from infra.budgets import UNWIND_S
from infra.session import close, connect, server_gone
from settings import Settings
from spark_jobs import jobs
from spark_jobs.candles import TradeIdRange
from spark_jobs.plan import TradeStats

T = TypeVar("T")


class OperationTimeout(TimeoutError):
    """A task's Spark work outlived its timeout and was interrupted on the server."""


def run_tag(flow_run_id: str | None) -> str:
    return f"ohlcv-{flow_run_id or 'local'}"


def interruptible(
    spark: SparkSession, tag: str, timeout_s: float | None, work: Callable[[], T]
) -> T:
    """Run ``work`` with every Spark operation tagged ``tag``; interrupt them if we stop waiting.

    The work runs in a helper thread (Spark Connect tags are per thread) while this thread
    waits in short slices, so Prefect's timeout or a cancellation reaches it promptly. On our
    own deadline, or any exception while waiting, the tagged operations are interrupted on
    the server before the error propagates.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        spark.addTag(tag)
        try:
            outcome["value"] = work()
        except BaseException as e:  # handed to the waiting thread
            outcome["error"] = e
        finally:
            spark.removeTag(tag)

    worker = threading.Thread(target=target, name=f"spark-{tag}", daemon=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    worker.start()
    try:
        while worker.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                raise OperationTimeout(
                    f"Spark work exceeded {timeout_s:.0f} s: interrupted the server-side "
                    f"operations tagged {tag}"
                )
            worker.join(0.2)
    except BaseException:
        if _interrupt(spark, tag):
            worker.join(UNWIND_S)  # let the interrupted call unwind, so nothing commits behind us
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def _interrupt(spark: SparkSession, tag: str) -> bool:
    """Interrupt the operations tagged ``tag`` on the server; False if it did not answer within
    :data:`UNWIND_S` (the call goes on in a daemon thread, which never delays the exit)."""
    done = threading.Event()

    def call() -> None:
        try:
            spark.interruptTag(tag)
            done.set()
        except Exception:  # an unreachable server: nothing more to interrupt from here
            pass

    threading.Thread(target=call, name=f"interrupt-{tag}", daemon=True).start()
    return done.wait(UNWIND_S)


def _worth_retrying(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Retry transient errors; never a validation failure (the data would fail again), nor a
    server that is gone (the run's session died with it: the retry would fail the same way,
    only after the retry delay, holding the writer slot)."""
    try:
        state.result(raise_on_failure=True)
    except ValidationFailed:
        return False
    except BaseException as e:
        return not server_gone(e)
    return True


@task(name="generate_candles", cache_policy=NO_CACHE, retry_condition_fn=_worth_retrying)
def generate_candles(
    spark: SparkSession, settings: Settings, tf: Timeframe, tag: str, request: RunRequest
) -> jobs.RunResult:
    """Recompute the affected windows into the audit branch."""
    run = interruptible(
        spark,
        tag,
        settings.generate_timeout_s,
        lambda: pipeline.generate(spark, settings, tf, request),
    )
    get_run_logger().info(
        "%s: %d trades read (%d new, %d before the lookback), %d windows: %d inserted, "
        "%d updated, %d unchanged",
        tf,
        run.trades_read,
        run.new_trades,
        run.late_trades,
        run.windows_recomputed,
        run.inserted,
        run.updated,
        run.unchanged,
    )
    return run


@task(name="validate_candles", cache_policy=NO_CACHE, retry_condition_fn=_worth_retrying)
def validate_candles(
    spark: SparkSession, settings: Settings, tf: Timeframe, tag: str, run: jobs.RunResult
) -> Validation:
    """Validate exactly the windows written, on the audit branch; raise if they fail."""
    validation = interruptible(
        spark, tag, None, lambda: pipeline.validate(spark, settings, tf, run)
    )
    logger = get_run_logger()
    for report in validation.reports:
        logger.info(
            "%s: %d/%d expectations passed on %d rows (%s)",
            report.checkpoint,
            report.passed_count,
            report.evaluated,
            report.rows,
            report.engine,
        )
    for note in validation.notes:
        logger.info(note)
    for warning in validation.warnings:
        logger.warning(warning)
    _validation_artifact(tf, validation)
    _gap_artifact(tf, validation)
    if validation.gaps is not None:
        windows = sum(int(r["windows"]) for r in validation.gap_rows)
        events.gaps(settings, tf, validation.empty_windows, windows)
    try:
        interruptible(
            spark,
            tag,
            None,
            lambda: pipeline.reject_if_invalid(spark, settings, tf, validation, logger),
        )
    except ValidationFailed as failed:
        events.validation_failed(settings, tf, failed)
        raise
    return validation


@task(name="publish_candles", cache_policy=NO_CACHE)
def publish_candles(spark: SparkSession, settings: Settings, tf: Timeframe, tag: str) -> int | None:
    """Fast-forward main to the validated audit branch."""
    snapshot = interruptible(spark, tag, None, lambda: pipeline.publish(spark, settings, tf))
    get_run_logger().info("%s: main is at snapshot %s", tf, snapshot)
    return snapshot


class TaskSteps(pipeline.Steps):
    """The pipeline's steps as this flow run's Prefect tasks, all tagged ``tag``."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def generate(
        self, spark: SparkSession, settings: Settings, tf: Timeframe, request: RunRequest
    ) -> jobs.RunResult:
        task_ = generate_candles.with_options(
            retries=settings.generate_retries,
            retry_delay_seconds=settings.generate_retry_delay_s,
            # Prefect's own timeout is a backstop: interruptible() fires first, interrupts the
            # server-side operations and raises OperationTimeout.
            timeout_seconds=settings.generate_timeout_s + 30,
        )
        return task_(spark, settings, tf, self.tag, request)

    def validate(
        self, spark: SparkSession, settings: Settings, tf: Timeframe, run: jobs.RunResult
    ) -> Validation:
        task_ = validate_candles.with_options(
            retries=settings.validate_retries,
            retry_delay_seconds=settings.validate_retry_delay_s,
        )
        return task_(spark, settings, tf, self.tag, run)

    def publish(self, spark: SparkSession, settings: Settings, tf: Timeframe) -> int | None:
        return publish_candles(spark, settings, tf, self.tag)


def _validation_artifact(tf: Timeframe, validation: Validation) -> None:
    lines = [f"# {tf} validation", ""]
    if not validation.reports:
        lines.append("Nothing was written, so nothing needed validating.")
    for report in validation.reports:
        verdict = "passed" if report.success else "FAILED"
        if report is validation.gaps and not report.success:
            verdict = "warning (not blocking)"
        lines.append(
            f"- **{report.checkpoint}** {verdict}: {report.passed_count}"
            f"/{report.evaluated} expectations on {report.rows} rows ({report.engine})"
        )
        lines += [f"  - {failure.describe()}" for failure in report.failures]
        if report.result_page:
            lines.append(f"  - [its data docs page]({report.result_page.as_uri()})")
    lines += [f"- note: {note}" for note in validation.notes]
    lines += [f"- **warning**: {warning}" for warning in validation.warnings]
    docs = next((r.data_docs for r in validation.reports if r.data_docs), None)
    if docs:
        lines += ["", f"All validations: [data docs index]({docs.as_uri()})"]
    create_markdown_artifact(
        key=f"ohlcv-{tf.name}-validation", markdown="\n".join(lines), description=f"{tf}"
    )


def _gap_artifact(tf: Timeframe, validation: Validation) -> None:
    """The run's gap report: per symbol and local day, how many windows had no trades."""
    if validation.gaps is None:
        return
    rows = [{c: str(r[c]) for c in GAP_COLUMNS} for r in validation.gap_rows]
    empty = sum(int(r["empty_windows"]) for r in validation.gap_rows)
    create_table_artifact(
        key=f"ohlcv-{tf.name}-gaps",
        table=rows,
        description=f"{tf} gap report: {empty} window(s) without trades, per symbol and local "
        "trading date (windows from the first candle of the day to the last)",
    )


def _superseded(tf: Timeframe) -> str | None:
    """Why this scheduled run should not run: a later one is already due and will cover it.

    After an outage the scheduler has a backlog of late runs; replaying each would recompute
    the same windows N times. The newest due run alone covers the gap, because the late-trade
    watermark makes it recompute every window touched since the last published run.
    """
    deployment_id = runtime.deployment.id
    expected = runtime.flow_run.scheduled_start_time
    if not deployment_id or expected is None:
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        later = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(not_any_=[runtime.flow_run.id]),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
                ),
                expected_start_time=FlowRunFilterExpectedStartTime(
                    after_=expected + timedelta(microseconds=1),
                    before_=datetime.now(UTC),  # type: ignore[arg-type]
                ),
            ),
            limit=1,
        )
    if later:
        return f"{tf}: a later run due at {later[0].expected_start_time} covers this one"
    return None


def run_candle_pipeline(
    tf: Timeframe,
    at: datetime | None = None,
    lookback_minutes: float | None = None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    trades_snapshot_id: int | None = None,
    backfill_start: datetime | None = None,
    chunk_trades: int | None = None,
    chunk_trade_ids: tuple[int, int] | None = None,
) -> RunMetrics:
    """The body of every timeframe's flow (see the module docstring)."""
    logger = get_run_logger()
    reason = _superseded(tf)
    if reason:
        logger.info("skipped: %s", reason)
        return RunMetrics(tf.name, skipped=reason)
    settings = Settings()
    request = _request(
        at, lookback_minutes, window_start, window_end, trades_snapshot_id, backfill_start
    )
    request = _counted(request, chunk_trades, chunk_trade_ids)
    with ends_within_grace(), one_writer(settings, tf.table):
        spark = connect(settings)
        try:
            result = pipeline.run_pipeline(
                spark, settings, tf, request, TaskSteps(run_tag(runtime.flow_run.id))
            )
        finally:
            close(spark)
    if result.published and result.main_after is not None:
        events.published(settings, tf, result.main_after)
    metrics = RunMetrics.of(tf, result)
    create_table_artifact(
        key=f"ohlcv-{tf.name}-metrics", table=metrics.rows(), description=f"{tf} run metrics"
    )
    return metrics


@flow(name="OHLCV Backfill", log_prints=False)
def backfill_flow(
    timeframes: list[str],
    window_start: datetime,
    window_end: datetime,
    trades_snapshot_id: int | None = None,
    backfill_start: datetime | None = None,
    chunk_trades: int | None = None,
    chunk_trade_ids: tuple[int, int] | None = None,
) -> list[RunMetrics]:
    """One chunk of a backfill of several timeframes, from one read of its trades."""
    from flows.backfill import run_chunk_pipelines

    settings = Settings()
    tfs = [TIMEFRAMES[name] for name in timeframes]
    request = _request(None, None, window_start, window_end, trades_snapshot_id, backfill_start)
    request = _counted(request, chunk_trades, chunk_trade_ids)
    with ends_within_grace(), ExitStack() as writers:
        for tf in tfs:
            writers.enter_context(one_writer(settings, tf.table))
        spark = connect(settings)
        try:
            steps = TaskSteps(run_tag(runtime.flow_run.id))
            runs = run_chunk_pipelines(spark, settings, tfs, request, steps)
        finally:
            close(spark)
    for metrics in runs:
        create_table_artifact(
            key=f"ohlcv-{metrics.timeframe}-metrics",
            table=metrics.rows(),
            description=f"{metrics.timeframe} backfill chunk metrics",
        )
    return runs


def _counted(
    request: RunRequest, chunk_trades: int | None, chunk_trade_ids: tuple[int, int] | None
) -> RunRequest:
    """The request with the chunk's trade counts, when the backfill planned chunks by trades
    (the run does not count them again)."""
    if chunk_trades is None:
        return request
    ids = TradeIdRange(*chunk_trade_ids) if chunk_trade_ids else None
    return replace(request, stats=TradeStats(chunk_trades, ids))


def _request(
    at: datetime | None,
    lookback_minutes: float | None,
    window_start: datetime | None,
    window_end: datetime | None,
    trades_snapshot_id: int | None,
    backfill_start: datetime | None,
) -> RunRequest:
    """The run's parameters as a request; times typed without an offset are UTC (edge rule).

    A backfill chunk is ``window_start``..``window_end``; ``backfill_start`` marks the last
    chunk of a backfill that began there (so it may record the watermark).
    """
    window_range = completes = None
    if window_start is not None or window_end is not None:
        if window_start is None or window_end is None:
            raise ValueError("pass both window_start and window_end for a backfill chunk")
        window_range = Range(assume_utc(window_start), assume_utc(window_end))
        if backfill_start is not None:
            completes = Range(assume_utc(backfill_start), window_range.end)
    return RunRequest(
        now=assume_utc(at) if at else None,
        lookback=None if lookback_minutes is None else timedelta(minutes=lookback_minutes),
        window_range=window_range,
        trades_snapshot_id=trades_snapshot_id,
        completes=completes,
    )


def _make_flow(tf: Timeframe) -> Flow[..., RunMetrics]:
    def body(
        at: datetime | None = None,
        lookback_minutes: float | None = None,
        window_start: datetime | None = None,
        window_end: datetime | None = None,
        trades_snapshot_id: int | None = None,
        backfill_start: datetime | None = None,
        chunk_trades: int | None = None,
        chunk_trade_ids: tuple[int, int] | None = None,
    ) -> RunMetrics:
        return run_candle_pipeline(
            tf,
            at,
            lookback_minutes,
            window_start,
            window_end,
            trades_snapshot_id,
            backfill_start,
            chunk_trades,
            chunk_trade_ids,
        )

    # Deployments load flows by module attribute: give each the name it is exported under.
    body.__name__ = body.__qualname__ = f"ohlcv_{tf.name}_flow"
    body.__doc__ = f"Recompute, validate and publish {tf} candles."
    return flow(name=tf.flow_name, log_prints=False)(body)


FLOWS: dict[str, Flow[..., RunMetrics]] = {name: _make_flow(tf) for name, tf in TIMEFRAMES.items()}
ohlcv_1m_flow = FLOWS["1m"]
ohlcv_5m_flow = FLOWS["5m"]
ohlcv_30m_flow = FLOWS["30m"]
ohlcv_1h_flow = FLOWS["1h"]
ohlcv_1d_flow = FLOWS["1d"]


def deployments() -> list[Any]:
    """The five scheduled deployments `ohlcv serve` runs: one writer per candle table."""
    return [
        FLOWS[tf.name].to_deployment(
            name=f"ohlcv-{tf.name}",
            schedule=Cron(tf.cron, timezone="UTC"),
            parameters={},
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
            tags=["ohlcv", tf.name],
            description=f"{tf.flow_name}: {tf} candles, cron '{tf.cron}' UTC",
        )
        for tf in TIMEFRAMES.values()
    ]
