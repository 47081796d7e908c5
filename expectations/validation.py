"""Run the suites through GX checkpoints, update data docs, and raise on failure.

The GX project configuration is committed (``expectations/great_expectations.yml``); each
data directory gets a copy, under which GX keeps what it generates (suites, validation
definitions, checkpoints, results, data docs). Suites, validation definitions and checkpoints
are rebuilt from code on every run, so the code is the one source of truth.

Engines: ``pandas`` collects the frame once and GX validates it in pandas; ``spark`` has GX
validate the Spark Connect DataFrame where it lives, running each expectation as Spark jobs of
its own (~50-100 ms each over Connect; about a minute for 400,000 candles); ``onepass``
evaluates the whole suite in one Spark aggregation (:mod:`expectations.onepass`) and stores the
outcome as the suite's GX result. ``auto``: pandas up to ``pandas_max_rows`` rows, onepass above
(GX's Spark engine for a suite onepass does not translate).
"""

from __future__ import annotations

import contextlib
import copy
import html
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.core import ExpectationSuiteValidationResult
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context import FileDataContext
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.render.view.view import DefaultJinjaView
from jinja2 import FileSystemBytecodeCache
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from core.tables import CANDLE_KEY
from expectations import onepass
from expectations.docs_assets import localize

CONFIG_TEMPLATE = Path(__file__).with_name("great_expectations.yml")
DATA_DOCS_SITE = "local_site"
INDEX_RESULTS_LIMIT = 100  # as in the template; projects copied before it are upgraded
Engine = Literal["auto", "spark", "pandas", "onepass"]


class ValidationFailed(RuntimeError):
    """A checkpoint failed: the message names each failed expectation with offending rows."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(report.describe_failures())


@dataclass
class ExpectationOutcome:
    suite: str
    expectation: str
    invariant: str
    success: bool
    unexpected_count: int = 0
    examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        shown = "; ".join(self.examples) if self.examples else "no row sample"
        return (
            f"{self.suite}: {self.expectation} ({self.invariant}) failed on "
            f"{self.unexpected_count} row(s), e.g. {shown}"
        )


@dataclass
class ValidationReport:
    """What one checkpoint found."""

    checkpoint: str
    success: bool
    rows: int
    engine: str
    outcomes: list[ExpectationOutcome]
    data_docs: Path | None
    result_page: Path | None = None  # this validation's own page in the data docs
    ranges: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # column -> (min, max) seen

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def evaluated(self) -> int:
        return len(self.outcomes)

    @property
    def passed_count(self) -> int:
        return self.evaluated - len(self.failures)

    def describe_failures(self) -> str:
        lines = [
            f"validation {self.checkpoint} failed: {len(self.failures)} of {self.evaluated} "
            f"expectations on {self.rows} candle row(s)"
        ]
        lines += [f"  - {o.describe()}" for o in self.failures]
        if self.result_page or self.data_docs:
            lines.append(f"  data docs: {self.result_page or self.data_docs}")
        return "\n".join(lines)


_template_cache: FileSystemBytecodeCache | None = None
_view_init = DefaultJinjaView.__init__


def _init_view(self: DefaultJinjaView, *args: Any, **kwargs: Any) -> None:
    _view_init(self, *args, **kwargs)
    if _template_cache is not None:
        self.env.bytecode_cache = _template_cache


# Every GX page view builds a jinja Environment of its own, so every data docs build compiled
# GX's templates again: about 0.75 s a checkpoint, in a process that `serve` starts per flow
# run. With a bytecode cache each template is compiled once per project and GX version, then
# loaded. Jinja keys an entry by template name and checks the source's checksum, and writes it
# atomically (concurrent runs are safe); GX's views all share one jinja configuration.
DefaultJinjaView.__init__ = _init_view  # type: ignore[method-assign]


def _cache_templates(project: Path) -> None:
    """Let GX's page views load compiled templates from ``project``'s template cache."""
    global _template_cache
    directory = project / "gx" / "uncommitted" / "template_cache" / gx.__version__
    if _template_cache is None or _template_cache.directory != str(directory):
        directory.mkdir(parents=True, exist_ok=True)
        _template_cache = FileSystemBytecodeCache(str(directory))


def gx_context(root: Path) -> FileDataContext:
    """The file-based GX context under ``root``, configured from the committed template."""
    project = root.resolve()
    _cache_templates(project)
    config = project / "gx" / "great_expectations.yml"
    if not config.exists():  # GX records its data sources in this copy afterwards
        config.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CONFIG_TEMPLATE, config)
    context = gx.get_context(mode="file", project_root_dir=str(project))
    assert isinstance(context, FileDataContext)
    site = copy.deepcopy((context.config.data_docs_sites or {}).get(DATA_DOCS_SITE))
    index = (site or {}).get("site_index_builder")
    if site and index is not None and index.get("validation_results_limit") != INDEX_RESULTS_LIMIT:
        # The index page reads every result it lists, so without a limit each checkpoint's
        # rebuild grows with the stored results (measured in the soak bench).
        index["validation_results_limit"] = INDEX_RESULTS_LIMIT
        context.update_data_docs_site(DATA_DOCS_SITE, site)
    return context


def data_docs_index(root: Path) -> Path:
    """Path of the data docs site's index page (it may not exist yet)."""
    return root.resolve() / "gx" / "uncommitted" / "data_docs" / DATA_DOCS_SITE / "index.html"


def build_data_docs(root: Path, web_cache: Path) -> Path:
    """Rebuild the data docs site from the stored suites and results; return its index.

    ``web_cache`` is where the pinned front-end packages the pages use are cached.
    """
    gx_context(root).build_data_docs(site_names=[DATA_DOCS_SITE])
    index = data_docs_index(root)
    localize(index.parent, web_cache)
    return index


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


def validates_in_pandas(engine: Engine, rows: int, pandas_max_rows: int = 5_000) -> bool:
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
    pandas_max_rows: int = 5_000,
    rows_hint: int | None = None,
    examples: int = 5,
    run_name: str | None = None,
    asset: str | None = None,
    keep_results: int | None = None,
) -> ValidationReport:
    """Validate ``frame`` against ``suite`` through a checkpoint, then update the data docs.

    Returns the report whether or not it passed; callers decide what a failure blocks.
    ``web_cache`` is where the data docs' pinned front-end packages are cached; ``asset``
    names what was validated on its page (e.g. the table and windows). With
    ``keep_results``, older results of the suite are dropped first (:func:`prune_results`).
    A pandas ``frame`` (rows already collected) is validated in pandas. ``rows_hint`` (how
    many rows the caller expects) lets ``auto`` choose without counting the frame first.
    """
    if keep_results is not None:
        prune_results(root, suite.name, keep_results - 1)  # this run adds one
    context = gx_context(root)
    chosen: Literal["spark", "pandas", "onepass"] = engine if engine != "auto" else "pandas"
    if isinstance(frame, pd.DataFrame):
        chosen = "pandas"
    elif engine == "auto":
        expected = frame.count() if rows_hint is None else rows_hint
        chosen = "pandas" if validates_in_pandas(engine, expected, pandas_max_rows) else "onepass"
    run_id = RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
    key_columns = [c for c in CANDLE_KEY if c in frame.columns]
    evaluated = None
    if chosen == "onepass":
        assert isinstance(frame, DataFrame)
        evaluated = onepass.evaluate(
            frame, suite.expectations, key_columns, examples, _range_columns(suite, frame)
        )
    if evaluated is not None:
        rows, results, ranges = evaluated
        run_results, changed = _store_results(context, name, suite, results, run_id, asset)
    else:
        if chosen == "onepass":
            chosen = "spark"  # a suite with an expectation onepass does not translate
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
) -> ValidationReport:
    """Render the stored results into the data docs and summarise them for the caller."""
    keys = list(run_results)
    built: list[Any] = list(keys)
    suite_page = data_docs_index(root).parent / "expectations" / f"{suite.name}.html"
    if suite_changed or not suite_page.exists():
        built.append(ExpectationSuiteIdentifier(name=suite.name))  # new or changed: re-render
    context.build_data_docs(site_names=[DATA_DOCS_SITE], resource_identifiers=built)
    pages = [_page(context, key) for key in keys]
    outcomes: list[ExpectationOutcome] = []
    for suite_result in run_results.values():
        for r in suite_result.results:
            config = r.expectation_config
            assert config is not None
            outcomes.append(
                ExpectationOutcome(
                    suite=suite.name,
                    expectation=config.type,
                    invariant=str((config.meta or {}).get("invariant", config.kwargs)),
                    success=bool(r.success),
                    unexpected_count=int(r.result.get("unexpected_count") or 0),
                    examples=_examples(r.result, r.exception_info, examples),
                )
            )
    report = ValidationReport(
        checkpoint=name,
        success=all(bool(r.success) for r in run_results.values()),
        rows=rows,
        engine=engine,
        outcomes=outcomes,
        data_docs=data_docs_index(root),
        result_page=pages[0] if pages else None,
        ranges=ranges,
    )
    for page in pages:
        _annotate(page, report, asset)
    localize(data_docs_index(root).parent, web_cache)
    return report


def _page(context: FileDataContext, key: Any) -> Path | None:
    """The data docs page of one validation result (a file of the local site)."""
    for site in context.get_docs_sites_urls(resource_identifier=key, site_name=DATA_DOCS_SITE):
        url = site.get("site_url")
        if url and url.startswith("file://"):
            return Path(unquote(urlparse(url).path))
    return None


def _range_columns(suite: gx.ExpectationSuite, frame: DataFrame | pd.DataFrame) -> list[str]:
    """The range-checked columns: their min and max tell what "0% unexpected" does not."""
    columns = {
        e.column for e in suite.expectations if isinstance(e, gxe.ExpectColumnValuesToBeBetween)
    }
    return sorted(c for c in columns if c in frame.columns)


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


_CONTENT_COLUMN = '<div class="col-md-10 col-lg-10 col-xs-12 pl-md-4 pr-md-3">'


def _annotate(page: Path | None, report: ValidationReport, asset: str | None) -> None:
    """Put what a reviewer needs first on the result page: what was checked, the verdict, the
    offending candles of each failed check, and the value ranges seen."""
    if page is None or not page.is_file():
        return
    text = page.read_text(encoding="utf-8")
    if _CONTENT_COLUMN not in text or 'id="ohlcv-summary"' in text:
        return
    e = html.escape
    verdict = "passed" if report.success else "FAILED"
    parts = [
        '<div id="ohlcv-summary" class="card mb-4"><div class="card-body">',
        f'<h4 class="card-title">{e(asset or report.checkpoint)}</h4>',
        f"<p><strong>{e(report.checkpoint)} {verdict}</strong>: {report.passed_count} of "
        f"{report.evaluated} expectations on {report.rows} candle row(s) ({e(report.engine)}).</p>",
    ]
    if report.failures:
        parts.append(
            '<h5>Failed checks and offending candles</h5><table class="table table-sm">'
            "<tr><th>Check</th><th>Rows</th><th>Offending candles (key and values)</th></tr>"
        )
        for failure in report.failures:
            shown = "<br>".join(e(x) for x in failure.examples) or "no row sample"
            parts.append(
                f"<tr><td>{e(failure.invariant)}</td><td>{failure.unexpected_count}</td>"
                f"<td><code>{shown}</code></td></tr>"
            )
        parts.append("</table>")
    if report.ranges:
        parts.append(
            '<h5>Values seen</h5><table class="table table-sm">'
            "<tr><th>Column</th><th>Min</th><th>Max</th></tr>"
        )
        parts += [
            f"<tr><td>{e(c)}</td><td>{e(str(lo))}</td><td>{e(str(hi))}</td></tr>"
            for c, (lo, hi) in report.ranges.items()
        ]
        parts.append("</table>")
    parts.append("</div></div>")
    page.write_text(
        text.replace(_CONTENT_COLUMN, _CONTENT_COLUMN + "".join(parts), 1), encoding="utf-8"
    )


def prune_results(root: Path, suite: str, keep: int) -> int:
    """Delete all but the newest ``keep`` validation results of ``suite`` and their data docs
    pages; returns how many were deleted.

    A scheduled pipeline validates every few minutes and GX keeps every result forever; each
    checkpoint rebuilds the data docs index over all of them, so validation got slower with
    every run (measured in the soak bench). GX has no retention of its own. Results are files
    of its filesystem store, ``<suite>/<run name>/<run time>/<batch>.json``, rendered to the same
    path with ``.html`` in the site; the index is rebuilt from the store by the next run.
    """
    gx_dir = root.resolve() / "gx"
    store = gx_dir / "uncommitted" / "validations" / suite
    if not store.is_dir():
        return 0
    results = sorted(store.glob("*/*/*.json"), key=lambda p: p.parent.name, reverse=True)
    site = gx_dir / "uncommitted" / "data_docs" / DATA_DOCS_SITE / "validations" / suite
    for old in results[keep:]:
        relative = old.relative_to(store)
        old.unlink()
        site.joinpath(relative).with_suffix(".html").unlink(missing_ok=True)
        for directory in (old.parent, old.parent.parent):
            for base in (store, site):
                with contextlib.suppress(OSError):  # only empty directories go
                    (base / directory.relative_to(store)).rmdir()
    return max(len(results) - keep, 0)


def _examples(result: dict[str, Any], exception_info: Any, limit: int) -> list[str]:
    """A few offending rows: their key and the unexpected values GX reports."""
    if isinstance(exception_info, dict) and exception_info.get("raised_exception"):
        return [f"GX raised: {exception_info.get('exception_message')}"]
    indexed = result.get("partial_unexpected_index_list") or []
    if indexed:
        return [_row(item) for item in indexed[:limit]]
    values = result.get("partial_unexpected_list") or []
    return [repr(v) for v in values[:limit]]


def _row(item: Any) -> str:
    if isinstance(item, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in item.items()) + "}"
    return repr(item)
