"""The docs site holds together: every page under docs/ is in the mkdocs.yml nav and in the README's
map, and every nav entry exists; every relative link of README.md and docs/ points at a file of the repository (as GitHub
resolves it) and every #anchor into a page at one of its headings; and, where mkdocs is installed,
``mkdocs build --strict`` passes (.ci/run builds it too)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")


def _nav_entries(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [e for item in node for e in _nav_entries(item)]
    if isinstance(node, dict):
        return [e for value in node.values() for e in _nav_entries(value)]
    return []


def _mkdocs_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def test_every_page_is_in_the_nav():
    nav = _nav_entries(_mkdocs_config()["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    missing = sorted(pages - set(nav))
    assert not missing, f"docs pages missing from the nav in mkdocs.yml: {missing}"
    assert "index.md" in nav  # generated from README.md by docs/hooks.py
    stale = sorted(e for e in nav if e != "index.md" and not (DOCS / e).is_file())
    assert not stale, f"nav entries in mkdocs.yml without a page: {stale}"
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_readme_maps_every_page():
    """The README's map of the docs links every page under docs/."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {os.path.normpath(m.group(1).partition("#")[0]) for m in LINK.finditer(readme)}
    pages = {p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*.md")}
    missing = sorted(pages - linked)
    assert not missing, f"README.md's map of the docs does not link: {missing}"


def _slugify(value: str, separator: str = "-") -> str:
    """Python-Markdown's toc slugify (the anchors mkdocs writes), where markdown is not installed."""
    try:
        from markdown.extensions.toc import slugify
    except ImportError:
        value = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
        value = re.sub(r"[^\w\s-]", "", value).strip().lower()
        return re.sub(rf"[{separator}\s]+", separator, value)
    return slugify(value, separator)


def _slugs(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_slugify(m.group(1).replace("`", "").strip()) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def _code_free(text: str) -> str:
    text = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_links_resolve(page):
    problems = []
    for m in LINK.finditer(_code_free(page.read_text(encoding="utf-8"))):
        target = m.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        file = Path(os.path.normpath(page.parent / path)) if path else page
        if not file.exists() or not file.resolve().is_relative_to(ROOT):
            problems.append(f"{target}: no such file in the repository")
        elif anchor and file.suffix == ".md" and anchor not in _slugs(file):
            problems.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "repo" / "results" / "quality.png").is_file()  # a results file a study links
