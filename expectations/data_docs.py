"""The data docs site: built from the stored suites and results, each result page annotated.

Pages are GX's own; :func:`annotate` puts what a reviewer needs first on a result page, and
:func:`~expectations.docs_assets.localize` serves the pages' front-end packages from a pinned
local cache.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from great_expectations.data_context import FileDataContext
from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

from expectations.docs_assets import localize
from expectations.project import DATA_DOCS_SITE, data_docs_index, gx_context
from expectations.report import ValidationReport


def build_data_docs(root: Path, web_cache: Path) -> Path:
    """Rebuild the data docs site from the stored suites and results; return its index.

    ``web_cache`` is where the pinned front-end packages the pages use are cached.
    """
    gx_context(root).build_data_docs(site_names=[DATA_DOCS_SITE])
    index = data_docs_index(root)
    localize(index.parent, web_cache)
    return index


def render_results(
    context: FileDataContext,
    root: Path,
    suite: str,
    keys: list[Any],
    suite_changed: bool,
    build_index: bool = True,
) -> list[Path | None]:
    """Render the stored results ``keys`` (and the suite's page when it is new or changed);
    returns each result's page. Without ``build_index`` the index page is left as it was
    (:func:`build_index` rebuilds it once after several checkpoints)."""
    built: list[Any] = list(keys)
    suite_page = data_docs_index(root).parent / "expectations" / f"{suite}.html"
    if suite_changed or not suite_page.exists():
        built.append(ExpectationSuiteIdentifier(name=suite))  # new or changed: re-render
    context.build_data_docs(
        site_names=[DATA_DOCS_SITE], resource_identifiers=built, build_index=build_index
    )
    return [_page(context, key) for key in keys]


def build_index(root: Path, web_cache: Path, suite: str) -> Path:
    """Rebuild the site's index page, once for a run's checkpoints (it reads each result it
    lists, up to 100: the largest part of a checkpoint's rendering); returns it. GX renders at
    least one page per build, so ``suite``'s page (a stored suite) is rendered again too."""
    context = gx_context(root)
    context.build_data_docs(
        site_names=[DATA_DOCS_SITE], resource_identifiers=[ExpectationSuiteIdentifier(name=suite)]
    )
    index = data_docs_index(root)
    localize(index.parent, web_cache)
    return index


def _page(context: FileDataContext, key: Any) -> Path | None:
    """The data docs page of one validation result (a file of the local site)."""
    for site in context.get_docs_sites_urls(resource_identifier=key, site_name=DATA_DOCS_SITE):
        url = site.get("site_url")
        if url and url.startswith("file://"):
            return Path(unquote(urlparse(url).path))
    return None


_CONTENT_COLUMN = '<div class="col-md-10 col-lg-10 col-xs-12 pl-md-4 pr-md-3">'


def annotate(page: Path | None, report: ValidationReport, asset: str | None) -> None:
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
