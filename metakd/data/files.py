"""Reading labelled examples from one local file: .tsv, .csv, .jsonl, .json or .txt, with header
detection."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Callable

from .columns import _KNOWN_COLUMNS, ColumnSpec, _examples, _resolve_columns
from .errors import DataError, _show, _show_list
from .labels import Text, _check_label_kinds, _parse_label

CLASSIFICATION_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".txt")


def read_labelled_file(path: str | Path, text_column: ColumnSpec = None, label_column: str | int | None = None,
                       header: bool | None = None,
                       report: Callable[[str], None] | None = None) -> list[tuple[Text, int | str]]:
    """Labelled examples from one file: ``(text, label)`` or ``((text_a, text_b), label)``.

    Labels come back as ``int`` when they are integers in the file (``"1"``, ``1``, ``1.0``) and
    as the stripped label name (``str``) otherwise; ``load_task`` maps names to ids. A file's
    labels must be all integers or all names; a non-integer number (``1.5``) or an empty label is
    an error.

    Formats, by suffix (case-insensitive):

    * ``.tsv`` (no quoting, as GLUE writes it) and ``.csv`` (standard quoting). ``header=None``
      detects the header from evidence: a cell that is a known column name (or a name passed
      here) makes the first row a header; a label cell (the last one, or ``label_column`` given
      by position) that is an integer, or a label other rows carry too, makes it data; a
      name-like label cell over integer labels, or name-like cells over longer texts, make it a
      header; anything else is kept as data. ``header=True/False`` says so. A file
      without a header has columns 0, 1, ...: two columns are ``text, label``, three are
      ``text_a, text_b, label``; otherwise name them by position.
    * ``.jsonl``: one JSON object per line. ``.json``: a list of objects.
    * ``.txt``: one example per line, ``label<TAB>text`` (or ``label<TAB>text_a<TAB>text_b``),
      or fastText's ``__label__NAME text``; no header, no columns to name. (Plain running text
      is language-modelling data: see ``load_lm_corpus``.)

    Columns: ``text_column`` names one column, or two for a pair (``"question,sentence"`` or a
    tuple); ``label_column`` one. Names or 0-based positions. When not given, the text columns
    are the first of ``PAIR_COLUMNS`` present, else of ``TEXT_COLUMNS``; the label is the first
    of ``LABEL_COLUMNS``. Texts are stripped; an empty text, a row with a different number of
    fields than the header (ragged), a missing value or a missing column raise DataError naming
    the file, the row and the columns found.

    ``report``, when given, gets one line: how many rows were read and the header decision.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in CLASSIFICATION_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; "
                        f"use {', '.join(CLASSIFICATION_SUFFIXES)}")
    if suffix == ".txt":
        if text_column is not None or label_column is not None:
            raise DataError(f"{path}: a .txt file has no columns to name (one 'label<TAB>text' per line)")
        examples, where = _read_txt(path)
    else:
        if suffix in (".tsv", ".csv"):
            rows, columns, lines, headerless, decision = _read_delimited(path, suffix, header, text_column,
                                                                         label_column)
        else:
            rows, columns, lines = _read_json(path, suffix)
            headerless, decision = False, "records"

        def where(i: int) -> str:
            return f"{path}, row {i + 1}" + (f" (line {lines[i]})" if lines is not None else "")

        hint = header is None and suffix in (".tsv", ".csv") and not headerless
        text_keys, label_key = _resolve_columns(text_column, label_column, columns, headerless, str(path), hint)
        examples = _examples(rows, text_keys, label_key, where)
    _check_label_kinds([y for _, y in examples], where)
    if report is not None:
        how = "lines" if suffix == ".txt" else "rows"
        report(f"read {len(examples):,} {how} from {path}" + ("" if suffix in (".txt", ".json", ".jsonl")
                                                             else f": {decision}"))
    return examples


def _read_txt(path: Path) -> tuple[list[tuple[Text, int | str]], Callable[[int], str]]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise DataError(f"{path} holds no examples")
    line_of = [n for n, _ in numbered]

    def where(i: int) -> str:
        return f"{path}, line {line_of[i]}"

    examples: list[tuple[Text, int | str]] = []
    fasttext = numbered[0][1].lstrip().startswith("__label__")
    first = [cell.strip() for cell in numbered[0][1].split("\t")]
    if not fasttext and len(first) > 1 and all(cell in _KNOWN_COLUMNS for cell in first):
        raise DataError(f"{where(0)}: looks like a header ({first}), but a .txt classification file has none "
                        "(one 'label<TAB>text' per line); name a file with a header .tsv")
    width = None
    for i, (_, line) in enumerate(numbered):
        if fasttext:
            match = re.fullmatch(r"\s*((?:__label__\S+\s+)+)(.*)", line)
            if match is None:
                raise DataError(f"{where(i)}: expected '__label__NAME text' like the first line")
            labels = match.group(1).split()
            if len(labels) > 1:
                raise DataError(f"{where(i)}: {len(labels)} labels {labels}; multi-label lines are not supported")
            raw_label, texts = labels[0][len("__label__"):], [match.group(2)]
        else:
            fields = line.split("\t")
            if len(fields) not in (2, 3):
                raise DataError(f"{where(i)}: {len(fields)} tab-separated fields; a .txt classification file "
                                "holds 'label<TAB>text' or 'label<TAB>text_a<TAB>text_b' per line (or "
                                "'__label__NAME text'); running text for language modelling goes to "
                                "load_lm_corpus")
            if width is None:
                width = len(fields)
            elif len(fields) != width:
                raise DataError(f"{where(i)}: {len(fields)} fields, but the first line has {width} (ragged rows)")
            raw_label, texts = fields[0], fields[1:]
        stripped = [t.strip() for t in texts]
        for t in stripped:
            if not t:
                raise DataError(f"{where(i)}: empty text")
        text: Text = stripped[0] if len(stripped) == 1 else (stripped[0], stripped[1])
        examples.append((text, _parse_label(raw_label, where(i))))
    return examples, where


def _read_delimited(path: Path, suffix: str, header: bool | None, text_column: ColumnSpec,
                    label_column: str | int | None) -> tuple[list[dict], list, list[int], bool, str]:
    delimiter = "\t" if suffix == ".tsv" else ","
    quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
    raw: list[list[str]] = []
    lines: list[int] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        try:
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    raw.append(row)
                    lines.append(reader.line_num)
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: {exc}") from exc
    if not raw:
        raise DataError(f"{path} holds no examples")
    if header is None:
        header, decision = _header_decision(raw, text_column, label_column)
    else:
        decision = "header row taken (header: true)" if header else "no header row (header: false)"
    if header:
        columns: list = [cell.strip() for cell in raw[0]]
        raw, lines = raw[1:], lines[1:]
        if not raw:
            raise DataError(f"{path} holds no examples (only a header: {columns})")
    else:
        columns = list(range(len(raw[0])))
    width = len(columns)
    rows = []
    for i, row in enumerate(raw):
        if len(row) != width:
            what = f"the header has {width} ({_show_list(columns)})" if header else f"the first row has {width}"
            hint = "; a tab inside a text?" if suffix == ".tsv" and len(row) > width else ""
            raise DataError(f"{path}, row {i + 1} (line {lines[i]}): {len(row)} fields, but {what} "
                            f"(ragged rows){hint}")
        rows.append(dict(zip(columns, row)))
    return rows, columns, lines, not header, decision


def _header_decision(raw: list[list[str]], text_column: ColumnSpec,
                     label_column: str | int | None) -> tuple[bool, str]:
    """Whether the first row of a delimited file is a header, and the evidence, from: cells that
    are known column names (or names passed here); the first row's label cell (the last one, or
    ``label_column`` by position) being an integer, or a label that other rows carry too; the
    other rows' labels being integers; first-row cells that look like column names where the
    other rows hold longer texts. When the evidence does not point to a header the row is data:
    no row is dropped on a guess."""
    cells = [cell.strip() for cell in raw[0]]
    known = set(_KNOWN_COLUMNS)
    for spec in (text_column, label_column):
        if isinstance(spec, str):
            known.update([spec] + [s.strip() for s in spec.split(",")])
        elif isinstance(spec, (tuple, list)):
            known.update(s for s in spec if isinstance(s, str))
    names = [cell for cell in cells if cell in known]
    if names:
        return True, f"header row taken: {_show(names, 4)} are column names"
    position = label_column if isinstance(label_column, int) and not isinstance(label_column, bool) else -1
    if not -len(cells) <= position < len(cells):
        return False, "no header row (the first row has too few cells for the label column)"
    try:
        first = _parse_label(cells[position], "")
    except DataError:
        return True, f"header row taken: its label cell {cells[position]!r} is no label"
    if isinstance(first, int):
        return False, f"no header row (the first row's label cell {cells[position]!r} is an integer)"
    others = []
    for row in raw[1:]:
        if -len(row) <= position < len(row):
            try:
                others.append(_parse_label(row[position], ""))
            except DataError:
                pass
    if first in others:
        return False, f"no header row (the first row's label {first!r} is a label of other rows too)"
    if others and all(isinstance(y, int) for y in others):
        return True, f"header row taken: its label cell {first!r} is a name, the other rows' labels are integers"
    label_at = position % len(cells)
    if isinstance(text_column, int) and not isinstance(text_column, bool):
        text_at = [text_column]
    elif isinstance(text_column, (tuple, list)) and all(isinstance(c, int) for c in text_column):
        text_at = list(text_column)
    else:
        text_at = [i for i in range(len(cells)) if i != label_at]
    name_like = all(_NAME.fullmatch(cells[i]) for i in text_at + [label_at] if 0 <= i < len(cells))
    words = sorted(len(row[i].split()) for row in raw[1:201] for i in text_at if 0 <= i < len(row))
    typical = words[len(words) // 2] if words else 0
    first_words = max((len(cells[i].split()) for i in text_at if 0 <= i < len(cells)), default=0)
    if name_like and typical >= 2 * max(first_words, 1):
        return True, (f"header row taken: its cells {_show(cells, 4)} look like column names and its label "
                      f"{first!r} occurs in no other row")
    return False, (f"no header row (kept the first row as data: its label {first!r} occurs in no other row, but "
                   "its cells do not look like column names; set header: true if they are)")


_NAME = re.compile(r"[A-Za-z_#][\w#.\- ]{0,39}")


def _read_json(path: Path, suffix: str) -> tuple[list[dict], list, list[int] | None]:
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".jsonl":
        rows, lines = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {n}: expected a JSON object, found {type(row).__name__}")
            rows.append(row)
            lines.append(n)
    else:
        if not text.strip():
            raise DataError(f"{path} holds no examples")
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: expected a JSON list of objects (records), e.g. "
                            '[{"text": "...", "label": 1}, ...]')
        lines = None
    if not rows:
        raise DataError(f"{path} holds no examples")
    columns = list(rows[0].keys())
    return rows, columns, lines
