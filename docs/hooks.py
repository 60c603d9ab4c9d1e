"""MkDocs hook: the README as the site's home page, and links to repository files outside docs/.

- ``index.md`` is generated from ``README.md`` (no copy to drift): its links into ``docs/`` become
  links between pages.
- A link from a page to a repository file outside ``docs/`` (``../results/quality.md``) works on
  GitHub as written: it is relative to the page's own file. MkDocs only knows the files under
  ``docs/``, so ``mkdocs build --strict`` would call it broken. This hook resolves each such link
  against the page's file on disk, exactly as GitHub does, and fails the build (a warning, which
  ``--strict`` turns into an error) when the target is not a file of the repository; otherwise it
  copies the target into the site under ``repo/`` (a ``.md`` file becomes a page there, outside the
  nav) and points the link at the copy.

Links between docs pages are left to MkDocs' own validation (``validation:`` in mkdocs.yml).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

log = logging.getLogger("mkdocs.hooks.repo_links")

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PREFIX = "repo"
LINK = re.compile(r"(!?\[[^\]\n]*\]\()([^)\s#]+)((?:#[^)\s]*)?\))")
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)


def _is_relative(target: str) -> bool:
    return not (re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"))


def _links(markdown: str):
    """Every inline link or image outside fenced code blocks (group 2: its target, without #anchor)."""
    spans = [m.span() for m in FENCE.finditer(markdown)]
    for m in LINK.finditer(markdown):
        if _is_relative(m.group(2)) and not any(a <= m.start() < b for a, b in spans):
            yield m


def _resolve(target: str, real_file: Path) -> Path:
    return Path(os.path.normpath(real_file.parent / target))


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def on_files(files: Files, config) -> Files:
    docs_dir = Path(config["docs_dir"]).resolve()
    if files.get_file_from_path("index.md") is None:
        files.append(File.generated(config, "index.md", abs_src_path=str(README)))
    needed: set[str] = set()
    for f in files.documentation_pages():
        real = Path(f.abs_src_path).resolve()
        for m in _links(real.read_text(encoding="utf-8")):
            target = _resolve(m.group(2), real)
            if not _inside(target, docs_dir) and _inside(target, REPO) and target.is_file():
                needed.add(target.relative_to(REPO).as_posix())
    for rel in sorted(needed):
        files.append(File.generated(config, f"{PREFIX}/{rel}", abs_src_path=str(REPO / rel),
                                    inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    src_uri = page.file.src_uri
    if src_uri.startswith(PREFIX + "/"):
        return markdown
    docs_dir = Path(config["docs_dir"]).resolve()
    real = Path(page.file.abs_src_path).resolve()
    here = posixpath.dirname(src_uri) or "."
    out, last = [], 0
    for m in _links(markdown):
        target = _resolve(m.group(2), real)
        if _inside(target, docs_dir):
            rel = target.relative_to(docs_dir).as_posix()
            if target.is_dir():
                continue  # left to MkDocs
        elif _inside(target, REPO) and target.is_file():
            rel = f"{PREFIX}/{target.relative_to(REPO).as_posix()}"
        else:
            log.warning("Doc file '%s' links to '%s', which is not a file of the repository", src_uri, m.group(2))
            continue
        new = posixpath.relpath(rel, here)
        if new != m.group(2):
            out += [markdown[last:m.start(2)], new]
            last = m.end(2)
    return "".join(out) + markdown[last:]
