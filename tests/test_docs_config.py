"""The configuration reference (docs/configuration-reference.md) is generated from the code: every
field of DistillConfig, RunConfig and CompressConfig has a docstring, the committed page is what
``python -m metakd.config_docs --write`` writes now, and the generator reads the fields right."""

from __future__ import annotations

import ast
import dataclasses
import importlib

import pytest

from metakd import config_docs
from metakd.config_docs import FieldDoc, field_docs, field_list, missing_docstrings, read_sources, reference_page

SOURCES = read_sources()
CLASSES = {"DistillConfig": "metakd.config", "RunConfig": "metakd.run", "CompressConfig": "metakd.compress.config"}


def _section(name):
    return next(s for s in config_docs.SECTIONS if s.class_name == name)


@pytest.mark.parametrize("name", CLASSES)
def test_every_field_has_a_docstring(name):
    missing = missing_docstrings(field_docs(SOURCES[_section(name).path], name))
    assert not missing, (f"{name} fields without a docstring (a string literal right after the field, in "
                         f"{_section(name).path}): {', '.join(missing)}")


@pytest.mark.parametrize("name", CLASSES)
def test_the_source_fields_are_the_dataclass_fields(name):
    cls = getattr(importlib.import_module(CLASSES[name]), name)
    parsed = field_docs(SOURCES[_section(name).path], name)
    assert [f.name for f in parsed] == [f.name for f in dataclasses.fields(cls)]
    for doc, f in zip(parsed, dataclasses.fields(cls)):
        try:
            default = ast.literal_eval(doc.default)
        except (ValueError, SyntaxError):
            continue  # a call such as DistillConfig()
        actual = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert default == actual, (name, f.name, doc.default, actual)


def test_committed_reference_is_up_to_date():
    page = config_docs.repository_root() / config_docs.PAGE
    assert page.read_text(encoding="utf-8") == reference_page(SOURCES), (
        f"{config_docs.PAGE} differs from the code's field docstrings; regenerate it: {config_docs.REGENERATE}")


def test_check_mode_reports_a_stale_page(tmp_path, monkeypatch, capsys):
    for s in config_docs.SECTIONS:
        (tmp_path / s.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / s.path).write_text(SOURCES[s.path], encoding="utf-8")
    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(config_docs, "repository_root", lambda: tmp_path)
    assert config_docs.main(["--check"]) == 1
    assert config_docs.REGENERATE in capsys.readouterr().err
    assert config_docs.main(["--write"]) == 0
    assert config_docs.main(["--check"]) == 0


def test_generator_on_a_small_source():
    source = '''
from dataclasses import dataclass, field

@dataclass
class Example:
    """An example."""

    plain: int = 3
    documented: str | None = None
    """Uses ``code_spans`` and a*b < c*d,
    over two lines.

    A second paragraph."""
    mapping: dict[str, str] = field(default_factory=dict)
    """A mapping."""
    required: float
    """No default."""

    def method(self) -> None:
        """Not a field."""
'''
    docs = field_docs(source, "Example")
    assert [d.name for d in docs] == ["plain", "documented", "mapping", "required"]
    assert missing_docstrings(docs) == ["plain"]
    assert docs[1] == FieldDoc("documented", "str | None", "None",
                               "Uses ``code_spans`` and a*b < c*d,\nover two lines.\n\nA second paragraph.")
    assert docs[2].default == "{}" and docs[3].default is None
    text = field_list(docs[1:])
    assert "- **`documented`** · `str | None` · default `None`<br>\n    Uses ``code_spans`` and a\\*b &lt; c\\*d, over two lines." in text
    assert "\n\n    A second paragraph." in text
    assert "- **`required`** · `float` · required" in text
