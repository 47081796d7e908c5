"""The GX project: its committed configuration, the file context, and GX's template cache.

The GX project configuration is committed (``expectations/great_expectations.yml``); each
data directory gets a copy, under which GX keeps what it generates (suites, validation
definitions, checkpoints, results, data docs).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import great_expectations as gx
from great_expectations.data_context import FileDataContext
from great_expectations.render.view.view import DefaultJinjaView
from jinja2 import FileSystemBytecodeCache

CONFIG_TEMPLATE = Path(__file__).with_name("great_expectations.yml")
DATA_DOCS_SITE = "local_site"
INDEX_RESULTS_LIMIT = 100  # as in the template; projects copied before it are upgraded

_template_cache: FileSystemBytecodeCache | None = None
_view_init = DefaultJinjaView.__init__


def _init_view(self: DefaultJinjaView, *args: Any, **kwargs: Any) -> None:
    _view_init(self, *args, **kwargs)
    if _template_cache is not None:
        self.env.bytecode_cache = _template_cache


def use_template_cache(project: Path) -> None:
    """Let GX's page views load compiled templates from ``project``'s template cache.

    Every GX page view builds a jinja Environment of its own, so every data docs build compiled
    GX's templates again: about 0.75 s a checkpoint, in a process that `serve` starts per flow
    run. With a bytecode cache each template is compiled once per project and GX version, then
    loaded. Jinja keys an entry by template name and checks the source's checksum, and writes it
    atomically (concurrent runs are safe); GX's views all share one jinja configuration, so
    GX's view class is patched (once, here) to give each view the cache.
    """
    global _template_cache
    if DefaultJinjaView.__init__ is not _init_view:
        DefaultJinjaView.__init__ = _init_view  # type: ignore[method-assign]
    directory = project / "gx" / "uncommitted" / "template_cache" / gx.__version__
    if _template_cache is None or _template_cache.directory != str(directory):
        directory.mkdir(parents=True, exist_ok=True)
        _template_cache = FileSystemBytecodeCache(str(directory))


def gx_context(root: Path) -> FileDataContext:
    """The file-based GX context under ``root``, configured from the committed template."""
    project = root.resolve()
    use_template_cache(project)
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
