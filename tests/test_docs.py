"""The documentation stays true to the code: no JVM, no server, a second or two.

- docs/configuration.md is what ``make docs-config`` generates from the ``Settings`` fields;
- the README's module map lists exactly the Python modules that exist;
- every relative link (and its #anchor) in README.md, docs/ and bench/README.md resolves;
- every ``OHLCV_*`` name the documents mention is a setting.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from settings import Settings
from settings.reference import env_names, render

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
DOCUMENTS = [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Directories of scripts (no package) whose modules the map lists too.
SCRIPT_DIRS = ["bench"]
MAP_HEADING = re.compile(r"^#+\s+Module map\s*$")
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s+<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
CODE_SPAN = re.compile(r"`[^`]*`")
# A setting's name; not a prefix such as OHLCV_CATALOG_* (followed by _ or *).
SETTING = re.compile(r"\bOHLCV_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_*])")


def _prose(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


# The configuration reference ------------------------------------------------------------------


def test_configuration_reference_is_current() -> None:
    # Given the reference generated from the Settings field descriptions
    expected = render()
    # Then the committed page is exactly that
    actual = CONFIGURATION.read_text(encoding="utf-8") if CONFIGURATION.exists() else ""
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                actual.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "docs/configuration.md (committed)",
                "docs/configuration.md (generated)",
                n=0,
            )
        )
        pytest.fail(f"docs/configuration.md is stale: run `make docs-config`\n{diff[:4000]}")


def test_configuration_reference_has_a_row_per_setting() -> None:
    # An independent look at the table: one row per Settings field, named as the env var.
    text = CONFIGURATION.read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([A-Z0-9_]+)`", text, re.MULTILINE)
    assert documented == [
        env_names(name, field)[0] for name, field in Settings.model_fields.items()
    ]
    assert "OHLCV_LOCAL_CORES" in documented
    assert "SPARK_REMOTE" in documented


# The README's module map ------------------------------------------------------------------------


def existing_modules(root: Path = ROOT) -> set[str]:
    """Every Python module of the packages at the root (tests excepted) and of the script
    directories, as the map names them: ``pkg/mod.py``, and ``pkg/`` for ``pkg/__init__.py``."""
    modules: set[str] = set()
    packages = [
        d
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name != "tests" and (d / "__init__.py").exists()
    ]
    for package in packages:
        for path in sorted(package.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            relative = path.relative_to(root)
            if path.name == "__init__.py":
                modules.add(f"{relative.parent.as_posix()}/")
            else:
                modules.add(relative.as_posix())
    for name in SCRIPT_DIRS:
        modules.update(p.relative_to(root).as_posix() for p in sorted((root / name).glob("*.py")))
    return modules


def module_map(readme: str) -> list[str]:
    """The paths the first column of the README's module map names (in backticks)."""
    lines = readme.splitlines()
    start = next((i for i, line in enumerate(lines) if MAP_HEADING.match(line)), None)
    assert start is not None, "README.md has no '## Module map' section"
    table: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append(line)
        elif table or line.startswith("#"):
            break
    assert len(table) > 2, "the README's Module map section holds no table"
    paths: list[str] = []
    for row in table[2:]:  # after the header and its separator
        first_cell = row.strip("|").split("|")[0]
        paths += re.findall(r"`([^`\s]+)`", first_cell)
    return paths


def test_module_map_lists_every_module_and_only_existing_files() -> None:
    listed = module_map(README.read_text(encoding="utf-8"))
    missing = sorted(existing_modules() - set(listed))
    absent = sorted(p for p in set(listed) if not (ROOT / p).exists())
    problems = []
    if missing:
        problems.append("modules missing from the map: " + ", ".join(missing))
    if absent:
        problems.append("listed in the map but not in the repository: " + ", ".join(absent))
    if problems:
        pytest.fail("README.md module map is stale. " + "; ".join(problems), pytrace=False)


def test_module_map_check_sees_a_new_package_and_a_removed_module(tmp_path: Path) -> None:
    # Given a repository with one package, a script directory and a test package
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ["pkg/__init__.py", "pkg/a.py", "pkg/sub/__init__.py", "pkg/sub/b.py"]:
        (tmp_path / name).write_text("")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "run.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.py").write_text("")  # not a package: not a module of the map
    # Then the modules the map must list are exactly these
    assert existing_modules(tmp_path) == {
        "pkg/",
        "pkg/a.py",
        "pkg/sub/",
        "pkg/sub/b.py",
        "bench/run.py",
    }
    # And the map's paths are read from its first column only
    readme = (
        "# x\n\n## Module map\n\n| module | what |\n|---|---|\n"
        "| `pkg/` | the package, not `pkg/zzz.py` |\n| `pkg/a.py`, `pkg/sub/b.py` | two |\n"
        "\n## Next\n| `other.py` | no |\n"
    )
    assert module_map(readme) == ["pkg/", "pkg/a.py", "pkg/sub/b.py"]


# Links -----------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in _prose(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    links: list[str] = []
    for line in _prose(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", line)
        links += LINK.findall(line)
        if match := REFERENCE.match(line):
            links.append(match.group(1))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(document: Path) -> None:
    assert document.exists(), f"{document.relative_to(ROOT)} is missing"
    broken = []
    for link in relative_links(document):
        target, _, fragment = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        if not path.exists():
            broken.append(f"{link} (no file {target})")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{link} (no heading #{fragment} in {path.relative_to(ROOT)})")
    if broken:
        pytest.fail(f"{document.relative_to(ROOT)}: broken links: " + "; ".join(broken))


def test_slug_follows_github() -> None:
    assert slug("Calendars and gaps") == "calendars-and-gaps"
    assert slug("Faults: one writer per table, bounded failures") == (
        "faults-one-writer-per-table-bounded-failures"
    )
    assert slug("Ingestion alone (`bench/ingest_rate.py`)") == "ingestion-alone-benchingest_ratepy"
    assert slug("Write-audit-publish") == "write-audit-publish"


# Setting names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documented_settings_exist(document: Path) -> None:
    known = {name for n, field in Settings.model_fields.items() for name in env_names(n, field)}
    unknown = sorted(set(SETTING.findall(document.read_text(encoding="utf-8"))) - known)
    assert not unknown, f"{document.relative_to(ROOT)} names settings that do not exist: {unknown}"
