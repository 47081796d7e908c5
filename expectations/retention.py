"""Retention of validation results: GX keeps every result forever, this keeps the newest."""

from __future__ import annotations

import contextlib
from pathlib import Path

from expectations.project import DATA_DOCS_SITE


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
