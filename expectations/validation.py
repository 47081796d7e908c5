"""Run the suites through GX checkpoints, update data docs, and raise on failure.

Suites, validation definitions and checkpoints are rebuilt from code on every run, so the code
is the one source of truth (the project: :mod:`expectations.project`; the report:
:mod:`expectations.report`; the data docs: :mod:`expectations.data_docs`; retention:
:mod:`expectations.retention`).

Engines: ``pandas`` collects the frame once and GX validates it in pandas; ``spark`` has GX
validate the Spark Connect DataFrame where it lives, running each expectation as Spark jobs of
its own (~50-100 ms each over Connect; about a minute for 400,000 candles); ``onepass``
evaluates the whole suite in one Spark aggregation (:mod:`expectations.onepass`) and stores the
outcome as the suite's GX result. ``auto``: pandas up to ``pandas_max_rows`` rows (none by
default: onepass is faster at every size), onepass above (GX's Spark engine for a suite onepass
does not translate).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import great_expectations as gx
import pandas as pd
from great_expectations.core import ExpectationSuiteValidationResult
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context import FileDataContext
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from core.tables import CANDLE_KEY
from expectations import onepass
from expectations.data_docs import annotate, render_results
from expectations.docs_assets import localize
from expectations.project import data_docs_index, gx_context
from expectations.report import ValidationReport, outcomes_of
from expectations.retention import prune_results

Engine = Literal["auto", "spark", "pandas", "onepass"]


class ValidationFailed(RuntimeError):
    """A checkpoint failed: the message names each failed expectation with offending rows."""

    rejected_tag: str | None = None
    """The tag that keeps the rejected candles, once they are tagged (see flows.pipeline)."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(report.describe_failures())


def _batch_definition(
    context: FileDataContext, engine: Literal["spark", "pandas"], asset: str
) -> BatchDefinition[Any]:
    name = f"ohlcv_{engine}"
    if engine == "spark":
        source: Any = context.data_sources.add_or_update_spark(name=name)
    else:
        source = context.data_sources.add_or_update_pandas(name=name)
    try:
        data_asset = source.get_asset(asset)
    except LookupError:
        data_asset = source.add_dataframe_asset(name=asset)
    try:
        return data_asset.get_batch_definition("written")  # type: ignore[no-any-return]
    except (KeyError, LookupError):
        return data_asset.add_batch_definition_whole_dataframe("written")  # type: ignore[no-any-return]


def validates_in_pandas(engine: Engine, rows: int, pandas_max_rows: int = 0) -> bool:
    """Whether :func:`run_checkpoint` validates ``rows`` rows of a Spark frame in pandas."""
    return engine == "pandas" or (engine == "auto" and rows <= pandas_max_rows)


def collect(frame: DataFrame) -> pd.DataFrame:
    """``frame``'s rows in pandas, for validation there (one query)."""
    data = frame.toPandas()
    # Spark Connect leaves the query's execution metrics in ``attrs``, and pandas deep-copies
    # ``attrs`` into every frame derived from this one: GX derives hundreds per checkpoint
    # (over a second of deep copies for a few hundred candles). They are not data.
    data.attrs.clear()
    return data


def run_checkpoint(
    root: Path,
    name: str,
    suite: gx.ExpectationSuite,
    frame: DataFrame | pd.DataFrame,
    *,
    web_cache: Path,
    engine: Engine = "auto",
    pandas_max_rows: int = 0,
    rows_hint: int | None = None,
    examples: int = 5,
    run_name: str | None = None,
    asset: str | None = None,
    keep_results: int | None = None,
    build_index: bool = True,
) -> ValidationReport:
    """Validate ``frame`` against ``suite`` through a checkpoint, then update the data docs.

    Returns the report whether or not it passed; callers decide what a failure blocks.
    ``web_cache`` is where the data docs' pinned front-end packages are cached; ``asset``
    names what was validated on its page (e.g. the table and windows). With
    ``keep_results``, older results of the suite are dropped first (:func:`prune_results`).
    Without ``build_index`` the site's index is not rebuilt (the caller does that once for
    several checkpoints, :func:`~expectations.data_docs.build_index`).
    A pandas ``frame`` (rows already collected) is validated in pandas. ``rows_hint`` (how
    many rows the caller expects) lets ``auto`` choose without counting the frame first.
    """
    chosen: Literal["spark", "pandas", "onepass"] = engine if engine != "auto" else "pandas"
    if isinstance(frame, pd.DataFrame):
        chosen = "pandas"
    elif engine == "auto":
        expected = frame.count() if rows_hint is None else rows_hint
        chosen = "pandas" if validates_in_pandas(engine, expected, pandas_max_rows) else "onepass"
    key_columns = [c for c in CANDLE_KEY if c in frame.columns]
    if chosen == "onepass":
        assert isinstance(frame, DataFrame)
        evaluated = onepass.evaluate(
            frame, suite.expectations, key_columns, examples, _range_columns(suite, frame)
        )
        if evaluated is not None:
            return record_checkpoint(
                root,
                name,
                suite,
                evaluated,
                web_cache=web_cache,
                examples=examples,
                run_name=run_name,
                asset=asset,
                keep_results=keep_results,
                build_index=build_index,
            )
        chosen = "spark"  # a suite with an expectation onepass does not translate
    if keep_results is not None:
        prune_results(root, suite.name, keep_results - 1)  # this run adds one
    context = gx_context(root)
    run_id = RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
    rows, run_results, ranges, changed = _run_checkpoint(
        context, name, suite, frame, chosen, key_columns, examples, run_id, asset
    )
    return _report(
        context,
        root,
        name,
        suite,
        run_results,
        rows,
        chosen,
        ranges,
        asset,
        web_cache,
        examples,
        changed,
        build_index,
    )


def record_checkpoint(
    root: Path,
    name: str,
    suite: gx.ExpectationSuite,
    evaluated: onepass.Evaluated,
    *,
    web_cache: Path,
    examples: int = 5,
    run_name: str | None = None,
    asset: str | None = None,
    keep_results: int | None = None,
    build_index: bool = True,
) -> ValidationReport:
    """Store results evaluated by onepass (rows, GX results, ranges seen) as the suite's
    checkpoint result, then update the data docs (the options as in :func:`run_checkpoint`)."""
    if keep_results is not None:
        prune_results(root, suite.name, keep_results - 1)  # this run adds one
    context = gx_context(root)
    run_id = RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
    rows, results, ranges = evaluated
    run_results, changed = _store_results(context, name, suite, results, run_id, asset)
    return _report(
        context,
        root,
        name,
        suite,
        run_results,
        rows,
        "onepass",
        ranges,
        asset,
        web_cache,
        examples,
        changed,
        build_index,
    )


def _run_checkpoint(
    context: FileDataContext,
    name: str,
    suite: gx.ExpectationSuite,
    frame: DataFrame | pd.DataFrame,
    chosen: Literal["spark", "pandas"],
    key_columns: list[str],
    examples: int,
    run_id: RunIdentifier,
    asset: str | None,
) -> tuple[int, dict[Any, Any], dict[str, tuple[Any, Any]], bool]:
    """GX validates through a checkpoint: rows, results by key, ranges seen, suite rewritten."""
    data: Any = frame
    if isinstance(frame, DataFrame) and chosen == "pandas":
        data = collect(frame)
    elif isinstance(frame, DataFrame) and chosen == "spark":
        # Every expectation runs Spark jobs of its own over the frame: cached, they read the
        # candles from memory instead of from the table each time (nothing is collected).
        data = frame.cache()
    rows = len(data) if isinstance(data, pd.DataFrame) else data.count()
    try:
        stored_suite, changed = _stored_suite(context, suite)
        batch = _batch_definition(context, chosen, name)
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{name}_{chosen}", data=batch, suite=stored_suite)
        )
        checkpoint = context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                actions=[],  # the docs are built below, once the result names its asset
                result_format={
                    "result_format": "SUMMARY",
                    "partial_unexpected_count": examples,
                    "unexpected_index_column_names": key_columns,
                },
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": data}, run_id=run_id)
        run_results: dict[Any, Any] = dict(result.run_results)
        if asset:
            for key, suite_result in run_results.items():
                # A dataframe batch names no asset where GX's pages look ("Data asset: None").
                meta: dict[str, Any] = suite_result.meta
                meta["batch_kwargs"] = {"data_asset_name": asset}
                context.validation_results_store.set(key, suite_result)
        return rows, run_results, _ranges_seen(_range_columns(suite, frame), data), changed
    finally:
        if chosen == "spark":
            data.unpersist()


def _shape(suite: gx.ExpectationSuite) -> list[Any]:
    return [
        (e.expectation_type, e.configuration.kwargs, e.meta, e.notes) for e in suite.expectations
    ]


def _stored_suite(
    context: FileDataContext, suite: gx.ExpectationSuite
) -> tuple[gx.ExpectationSuite, bool]:
    """The suite as stored in the project, and whether it was (re)written: only when the
    code's suite differs, so a scheduled run does not rewrite and re-render it every time."""
    try:
        stored = context.suites.get(suite.name)
    except Exception:  # GX raises its own not-found errors; any doubt rewrites the suite
        stored = None
    if stored is not None and _shape(stored) == _shape(suite):
        return stored, False
    return context.suites.add_or_update(suite), True


def _store_results(
    context: FileDataContext,
    name: str,
    suite: gx.ExpectationSuite,
    results: list[Any],
    run_id: RunIdentifier,
    asset: str | None,
) -> tuple[dict[Any, Any], bool]:
    """Store onepass results as the suite's GX validation result, as a checkpoint would;
    returns them by key, and whether the suite itself was (re)written."""
    _, changed = _stored_suite(context, suite)
    passed = sum(1 for r in results if r.success)
    suite_result = ExpectationSuiteValidationResult(
        success=passed == len(results),
        results=results,
        suite_name=suite.name,
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100.0 * passed / len(results) if results else None,
        },
        meta={
            "great_expectations_version": gx.__version__,
            "run_id": run_id,
            "validation_time": run_id.run_time,
            "checkpoint_name": name,
            "engine": "onepass (one Spark aggregation)",
            "batch_kwargs": {"data_asset_name": asset or name},
        },
    )
    key = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite.name),
        run_id=run_id,
        batch_identifier=f"ohlcv_onepass-{name}",
    )
    context.validation_results_store.set(key, suite_result)
    return {key: suite_result}, changed


def _report(
    context: FileDataContext,
    root: Path,
    name: str,
    suite: gx.ExpectationSuite,
    run_results: dict[Any, Any],
    rows: int,
    engine: str,
    ranges: dict[str, tuple[Any, Any]],
    asset: str | None,
    web_cache: Path,
    examples: int,
    suite_changed: bool,
    build_index: bool,
) -> ValidationReport:
    """Render the stored results into the data docs and summarise them for the caller."""
    pages = render_results(context, root, suite.name, list(run_results), suite_changed, build_index)
    report = ValidationReport(
        checkpoint=name,
        success=all(bool(r.success) for r in run_results.values()),
        rows=rows,
        engine=engine,
        outcomes=outcomes_of(suite.name, run_results, examples),
        data_docs=data_docs_index(root),
        result_page=pages[0] if pages else None,
        ranges=ranges,
    )
    for page in pages:
        annotate(page, report, asset)
    localize(data_docs_index(root).parent, web_cache)
    return report


def _range_columns(suite: gx.ExpectationSuite, frame: DataFrame | pd.DataFrame) -> list[str]:
    """The range-checked columns: their min and max tell what "0% unexpected" does not."""
    return onepass.range_columns(suite.expectations, list(frame.columns))


def _ranges_seen(columns: list[str], data: Any) -> dict[str, tuple[Any, Any]]:
    """Min and max of each of ``columns`` in a Spark or pandas frame."""
    if not columns:
        return {}
    if isinstance(data, DataFrame):
        row = data.agg(
            *[F.min(c).alias(f"min_{c}") for c in columns],
            *[F.max(c).alias(f"max_{c}") for c in columns],
        ).first()
        assert row is not None
        return {c: (row[f"min_{c}"], row[f"max_{c}"]) for c in columns}
    return {c: (_plain(data[c].min()), _plain(data[c].max())) for c in columns}


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (an int prints as an int)."""
    return value.item() if hasattr(value, "item") else value
