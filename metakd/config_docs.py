"""The configuration reference, generated from the code so that it cannot drift from it.

Every field of ``DistillConfig`` (``metakd/config.py``), of a run file (``RunConfig``,
``metakd/run.py``) and of its ``compress:`` section (``CompressConfig``,
``metakd/compress/config.py``) is read from the source with :mod:`ast` (nothing is imported or
run): its name, type annotation, default and attribute docstring (the string literal right after
the field). The page is ``docs/configuration-reference.md``::

    python -m metakd.config_docs            # print the page
    python -m metakd.config_docs --write    # (re)write docs/configuration-reference.md
    python -m metakd.config_docs --check    # exit 1 when the committed page differs from the code

``tests/test_docs_config.py`` fails when a field has no docstring or the committed page is stale.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PAGE = Path("docs") / "configuration-reference.md"
REGENERATE = "python -m metakd.config_docs --write"


@dataclass(frozen=True)
class Section:
    """One dataclass of the reference: where its source is (relative to the repository) and how the page heads it."""

    class_name: str
    path: str
    heading: str
    intro: str


SECTIONS = (
    Section("DistillConfig", "metakd/config.py", "`DistillConfig`: the distillation settings (`distill:` in a run file)",
            "In Python `DistillConfig(...)`, `DistillConfig.from_yaml(path)` (the keys at top level or under "
            "`distill:`); in a run file the keys go under `distill:`. Invalid values raise `metakd.ConfigError` "
            "naming the field; unknown keys are an error with a did-you-mean."),
    Section("RunConfig", "metakd/run_config.py", "Run-file keys (`RunConfig`)",
            "The top level of a run file (`metakd finetune-teacher`, `metakd distill`, `metakd compress`; see "
            "[Run files](runs.md)); `--set key=value` overrides any of them (`--set distill.KEY=...` for the "
            "`distill:` section)."),
    Section("CompressConfig", "metakd/compress/config.py", "`compress:` (`CompressConfig`)",
            "What `metakd compress` does to the distilled student (see [Compression](compression.md))."),
)


@dataclass(frozen=True)
class FieldDoc:
    """One dataclass field as the source declares it."""

    name: str
    type: str
    default: str | None  # source text of the default; None: the field is required
    doc: str | None  # the attribute docstring, cleaned (inspect.cleandoc); None: it has none


def _class(tree: ast.Module, class_name: str) -> ast.ClassDef:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return node
    raise LookupError(f"no class {class_name!r} in the source")


def _segment(lines: list[bytes], node: ast.AST) -> str:
    """The source text of a node (``ast.get_source_segment`` without re-splitting the source per call;
    column offsets are UTF-8 byte offsets)."""
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        return lines[first][node.col_offset:node.end_col_offset].decode("utf-8")
    parts = [lines[first][node.col_offset:], *lines[first + 1:last], lines[last][:node.end_col_offset]]
    return b"\n".join(parts).decode("utf-8")


def _default(lines: list[bytes], value: ast.expr | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
        for kw in value.keywords:
            if kw.arg == "default":
                return _segment(lines, kw.value)
            if kw.arg == "default_factory":
                factory = _segment(lines, kw.value)
                return {"dict": "{}", "list": "[]"}.get(factory, f"{factory}()")
    return _segment(lines, value)


def class_docstring(source: str, class_name: str) -> str | None:
    """The class's own docstring, cleaned."""
    return ast.get_docstring(_class(ast.parse(source), class_name))


def field_docs(source: str, class_name: str) -> list[FieldDoc]:
    """The fields of dataclass ``class_name`` in ``source``, in order, with their attribute docstrings."""
    body = _class(ast.parse(source), class_name).body
    lines = [line.encode("utf-8") for line in source.replace("\r\n", "\n").split("\n")]
    out = []
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        annotation = _segment(lines, node.annotation)
        if "ClassVar" in annotation:
            continue
        nxt = body[i + 1] if i + 1 < len(body) else None
        doc = None
        if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            doc = inspect.cleandoc(nxt.value.value).strip() or None
        out.append(FieldDoc(node.target.id, annotation, _default(lines, node.value), doc))
    return out


def missing_docstrings(fields: list[FieldDoc]) -> list[str]:
    """Names of the fields without a docstring."""
    return [f.name for f in fields if not f.doc]


_CODE = re.compile(r"(``.+?``|`[^`\n]+`)")


def _markdown_text(text: str) -> str:
    """A docstring's prose as Markdown: code spans kept, characters Markdown would take as markup escaped."""
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        parts[i] = parts[i].replace("\\", "\\\\").replace("*", "\\*").replace("<", "&lt;")
    return "".join(parts)


def _paragraphs(doc: str) -> list[str]:
    return [" ".join(line.strip() for line in block.splitlines())
            for block in re.split(r"\n\s*\n", doc) if block.strip()]


def field_list(fields: list[FieldDoc]) -> str:
    """A Markdown list: one item per field, ``name`` · ``type`` · default, then the docstring."""
    items = []
    for f in fields:
        default = "required" if f.default is None else f"default `{f.default}`"
        head = f"- **`{f.name}`** · `{f.type}` · {default}"
        paras = [_markdown_text(p) for p in _paragraphs(f.doc or "(no docstring)")]
        items.append(head + "<br>\n    " + "\n\n    ".join(paras))
    return "\n".join(items) + "\n"


def reference_page(sources: dict[str, str]) -> str:
    """The whole reference page from the sources (``{path: text}`` for each path in SECTIONS): pure."""
    out = ["# Configuration reference", "",
           f"<!-- Generated by `{REGENERATE}` from "
           + ", ".join(s.path for s in SECTIONS)
           + ". Do not edit: edit the field docstrings there and regenerate. -->", "",
           "Generated from the code (each field's type annotation, default and docstring, read with `ast` by "
           "`metakd/config_docs.py`), so it lists every field there is. Defaults are Python literals: in YAML, "
           "`None` is `null`, `True`/`False` are `true`/`false`. [Configuration](configuration.md) has the "
           "overview table.", ""]
    for s in SECTIONS:
        fields = field_docs(sources[s.path], s.class_name)
        out += [f"## {s.heading}", ""]
        doc = class_docstring(sources[s.path], s.class_name)
        if doc:
            out += [_markdown_text(_paragraphs(doc)[0]), ""]
        out += [s.intro, "", field_list(fields)]
    return "\n".join(out).rstrip("\n") + "\n"


def repository_root() -> Path:
    return Path(__file__).resolve().parents[1]


def read_sources(root: Path | None = None) -> dict[str, str]:
    root = root or repository_root()
    return {s.path: (root / s.path).read_text(encoding="utf-8") for s in SECTIONS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metakd.config_docs", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help=f"write {PAGE}")
    g.add_argument("--check", action="store_true", help=f"exit 1 when {PAGE} differs from the code")
    args = p.parse_args(argv)
    root = repository_root()
    page = reference_page(read_sources(root))
    target = root / PAGE
    if args.write:
        target.write_text(page, encoding="utf-8")
        print(f"wrote {PAGE}")
    elif args.check:
        if not target.is_file() or target.read_text(encoding="utf-8") != page:
            print(f"{PAGE} is out of date with the code; run: {REGENERATE}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
