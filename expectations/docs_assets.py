"""Make the GX data docs render offline: serve their scripts and styles from the site itself.

Pages keep no URL outside the site: GX's logo, links and newsletter footer are replaced.

GX's pages load jQuery, Bootstrap and bootstrap-table from public CDNs; without them the index
shows no tables at all. Trading desks often review docs on machines without internet access, so
after every build the pinned packages are fetched once with npm (`npm pack`, which checks the
registry's integrity hash), cached, copied into ``static/vendor/`` of the site, and the pages
are rewritten to point there. Without npm the CDN links stay, and the docs work online only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_MARKER = ".ohlcv-localized"


@dataclass(frozen=True)
class Asset:
    url: str  # exactly as GX writes it into the pages
    package: str  # npm name@version
    member: str  # path inside the package tarball
    companions: str = ""  # a directory of the package the file refers to (fonts)

    @property
    def directory(self) -> str:
        """Where the package's files go, under the cache and under ``static/vendor``."""
        return self.package.lstrip("@").replace("/", "-").replace("@", "-")

    @property
    def filename(self) -> str:
        return f"{self.directory}/{self.member}"

    @property
    def tarball(self) -> str:
        """The file name ``npm pack`` gives the package."""
        return self.directory.replace("@", "") + ".tgz"


ASSETS = (
    Asset("https://code.jquery.com/jquery-3.7.1.min.js", "jquery@3.7.1", "dist/jquery.min.js"),
    Asset(
        "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js",
        "popper.js@1.12.9",
        "dist/umd/popper.min.js",
    ),
    Asset(
        "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js",
        "bootstrap@4.3.1",
        "dist/js/bootstrap.min.js",
    ),
    Asset(
        "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css",
        "bootstrap@4.3.1",
        "dist/css/bootstrap.min.css",
    ),
    Asset(
        "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js",
        "bootstrap-table@1.19.1",
        "dist/bootstrap-table.min.js",
    ),
    Asset(
        "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css",
        "bootstrap-table@1.19.1",
        "dist/bootstrap-table.min.css",
    ),
    Asset(
        "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.min.js",
        "bootstrap-table@1.19.1",
        "dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    ),
    Asset(
        "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.min.css",
        "bootstrap-table@1.19.1",
        "dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    ),
    Asset(
        "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/"
        "bootstrap-datepicker.min.js",
        "bootstrap-datepicker@1.9.0",
        "dist/js/bootstrap-datepicker.min.js",
    ),
    Asset(
        "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/"
        "bootstrap-datepicker.min.css",
        "bootstrap-datepicker@1.9.0",
        "dist/css/bootstrap-datepicker.min.css",
    ),
    Asset(
        "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/"
        "bootstrap-table-filter-control.css",
        "bootstrap-table@1.19.1",
        "dist/extensions/filter-control/bootstrap-table-filter-control.css",
    ),
    Asset(
        "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css",
        "@fortawesome/fontawesome-free@6.6.0",
        "css/all.min.css",
        companions="webfonts",
    ),
    Asset(
        "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
        "bootstrap-prefers-dark.css",
        "@forevolve/bootstrap-dark@1.1.0",
        "dist/css/bootstrap-prefers-dark.css",
    ),
    # GX asks for the newest 5.x / 6.x; pinned here to the newest of each on 2026-11-27.
    Asset("https://cdn.jsdelivr.net/npm/vega@5", "vega@5.33.0", "build/vega.min.js"),
    Asset("https://cdn.jsdelivr.net/npm/vega-lite@5", "vega-lite@5.23.0", "build/vega-lite.min.js"),
    Asset(
        "https://cdn.jsdelivr.net/npm/vega-embed@6", "vega-embed@6.29.0", "build/vega-embed.min.js"
    ),
)

# GX's own branding, fetched from the internet or pointing at it, replaced by plain text;
# limits GX renders as floats (``60000000.0``) shown as the integers they are.
BRAND = "OHLCV candle checks"
REWRITES = (
    (
        re.compile(
            r"<img\s+class=\"NO-CACHE\"\s+src=\"https://great-expectations-web-assets[^>]*>"
        ),
        f'<span class="h4 text-body">{BRAND}</span>',
    ),
    (re.compile(r"url\('https://great-expectations-web-assets[^']*'\)"), "none"),
    (re.compile(r"<footer>\s*<p>Stay current[^<]*<a [^>]*>[^<]*</a></p>\s*</footer>"), ""),
    (re.compile(r'<a href="https://greatexpectations\.io[^"]*">([^<]*)</a>'), r"\1"),
    (re.compile(r'(<span class="badge badge-secondary" >-?\d+)\.0(</span>)'), r"\1\2"),
)


class AssetError(RuntimeError):
    """A pinned front-end package could not be fetched."""


def fetch_assets(cache: Path) -> dict[Asset, Path]:
    """Every asset as a cached file, fetching missing packages with ``npm pack``."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = sorted({a.package for a in ASSETS if not (cache / a.filename).is_file()})
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            raise AssetError(f"npm is not installed: cannot fetch {', '.join(missing)}")
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(
                [npm, "pack", *missing, "--pack-destination", tmp, "--silent"],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if done.returncode != 0:
                raise AssetError(f"npm pack {' '.join(missing)} failed: {done.stderr.strip()}")
            for package in missing:
                assets = [a for a in ASSETS if a.package == package]
                with tarfile.open(Path(tmp) / assets[0].tarball) as archive:
                    for member in archive.getmembers():
                        inner = member.name.removeprefix("package/")
                        wanted = any(
                            inner == a.member
                            or (a.companions and inner.startswith(a.companions + "/"))
                            for a in assets
                        )
                        source = archive.extractfile(member) if wanted else None
                        if source is None:
                            continue
                        target = cache / assets[0].directory / inner
                        target.parent.mkdir(parents=True, exist_ok=True)
                        partial = target.with_name(target.name + ".part")
                        partial.write_bytes(source.read())
                        partial.replace(target)
                for asset in assets:
                    if not (cache / asset.filename).is_file():
                        raise AssetError(f"{package} has no {asset.member}")
    return {a: cache / a.filename for a in ASSETS}


def localize(site: Path, cache: Path) -> bool:
    """Point the site's pages at local copies of the CDN assets; False if they are unavailable.

    Only pages written since the previous call are rewritten (the site keeps every result).
    """
    try:
        files = fetch_assets(cache)
    except (AssetError, OSError, subprocess.SubprocessError) as e:
        log.warning("data docs keep their CDN links (need internet to render): %s", e)
        return False
    vendor = site / "static" / "vendor"
    vendor.mkdir(parents=True, exist_ok=True)
    for asset in files:
        target = vendor / asset.directory
        if not (vendor / asset.filename).exists():
            shutil.copytree(cache / asset.directory, target, dirs_exist_ok=True)
    marker = site / _MARKER
    since = marker.stat().st_mtime if marker.exists() else 0.0
    pattern = re.compile("|".join(re.escape(a.url) for a in ASSETS))
    by_url = {a.url: a for a in ASSETS}
    marker.touch()
    for page in site.rglob("*.html"):
        if page.stat().st_mtime < since:
            continue
        text = page.read_text(encoding="utf-8")
        prefix = os.path.relpath(vendor, page.parent)

        def local(match: re.Match[str], prefix: str = prefix) -> str:
            return f"{prefix}/{by_url[match.group(0)].filename}"

        changed = pattern.sub(local, text)
        for rewrite, replacement in REWRITES:
            changed = rewrite.sub(replacement, changed)
        if changed != text:
            page.write_text(changed, encoding="utf-8")
    return True


def external_urls(site: Path) -> dict[Path, list[str]]:
    """Every URL a page of ``site`` would fetch or link outside the site, per page."""
    found: dict[Path, list[str]] = {}
    for page in sorted(site.rglob("*.html")):
        urls = _EXTERNAL.findall(page.read_text(encoding="utf-8"))
        if urls:
            found[page] = urls
    return found


# Any absolute or protocol-relative http(s) URL; XML namespaces are names, never fetched.
_EXTERNAL = re.compile(r"(?:https?:)?//(?!www\.w3\.org/)[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"'<>)]*")
