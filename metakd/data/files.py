"""Reading labelled examples from one local file: .tsv, .csv, .jsonl, .json or .txt, with header
detection."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from .columns import _KNOWN_COLUMNS, ColumnSpec, _examples, _resolve_columns
from .errors import DataError, _show, _show_list
from .labels import Text, _check_label_kinds, _parse_label
from .text import read_text

CLASSIFICATION_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".txt")


def read_labelled_file(path: str | Path, text_column: ColumnSpec = None, label_column: str | int | None = None,
                       header: bool | None = None,
                       report: Callable[[str], None] | None = None, *,
                       encoding: str | None = None) -> list[tuple[Text, int | str]]:
    """Labelled examples from one file: ``(text, label)`` or ``((text_a, text_b), label)``.

    Labels come back as ``int`` when they are integers in the file (``"1"``, ``1``, ``1.0``) and
    as the stripped label name (``str``) otherwise; ``load_task`` maps names to ids. A file's
    labels must be all integers or all names; a non-integer number (``1.5``) or an empty label is
    an error.

    Formats, by suffix (case-insensitive):

    * ``.tsv`` (no quoting, as GLUE writes it) and ``.csv`` (standard quoting). ``header=True/False``
      says whether the first row names the columns. ``header=None`` decides only on strong
      evidence (see ``_header_decision``): the first row is data when its label cell (the last
      one, or ``label_column`` given by position) is an integer or a label other rows carry too;
      it is a header when a cell other than the label cell is a known column name (or a name
      passed here), or when its label cell cannot be a label of the file (a name over integer
      labels, or no label at all). Anything else is weak evidence, and a DataError shows the first
      row and asks for ``header``: no row is taken or dropped on a guess. A file without a header
      has columns 0, 1, ...: two columns are ``text, label``, three are ``text_a, text_b, label``;
      otherwise name them by position.
    * ``.jsonl``: one JSON object per line. ``.json``: a list of objects.
    * ``.txt``: one example per line, ``label<TAB>text`` (or ``label<TAB>text_a<TAB>text_b``),
      or fastText's ``__label__NAME text``; no header, no columns to name. (Plain running text
      is language-modelling data: see ``load_lm_corpus``.)

    Columns: ``text_column`` names one column, or two for a pair (``"question,sentence"`` or a
    tuple); ``label_column`` one. Names or 0-based positions. When not given, the text columns
    are the first of ``PAIR_COLUMNS`` present, else of ``TEXT_COLUMNS``; the label is the first
    of ``LABEL_COLUMNS`` (a name that matches only ignoring case counts too). Texts are stripped;
    an empty text, a row with a different number of fields than the header (ragged), a missing
    value or a missing column raise DataError naming the file, the row and the columns found. A
    label column of names with about one class per row (more distinct names than half the rows,
    10 rows or more) holds texts, not classes: a DataError names the likely swap.

    ``encoding``: the file's text encoding (default UTF-8, a byte-order mark skipped); a file that
    is not UTF-8 (Latin-1, binary) is a one-line DataError with the byte offset and how to convert it.

    ``report``, when given, gets one line: how many rows were read and the header decision.
    """
    examples, _ = _read_labelled(path, text_column, label_column, header, report, encoding)
    return examples


class _Layout:
    """Where a file's texts and labels were: column keys (names, or positions without a header)."""

    def __init__(self, text_keys: tuple, label_key: Any, txt: bool = False):
        self.text_keys, self.label_key, self.txt = text_keys, label_key, txt

    def name(self, key: Any) -> str:
        if self.txt:
            return "the label field" if key == self.label_key else f"text field {key}"
        return f"column {key}" if isinstance(key, int) else f"column {key!r}"


def _read_labelled(path: str | Path, text_column: ColumnSpec, label_column: str | int | None, header: bool | None,
                   report: Callable[[str], None] | None, encoding: str | None,
                   check_classes: bool = True) -> tuple[list[tuple[Text, int | str]], _Layout]:
    """``read_labelled_file``'s examples and where they came from; ``check_classes=False`` skips the
    check that the label column holds classes (an eval file of a many-class task may be small)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in CLASSIFICATION_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; "
                        f"use {', '.join(CLASSIFICATION_SUFFIXES)}")
    if header is not None and not isinstance(header, bool):
        raise DataError(f"header must be true, false or null (decided from the file), got {header!r}")
    text = read_text(path, encoding)
    if suffix == ".txt":
        if text_column is not None or label_column is not None:
            raise DataError(f"{path}: a .txt file has no columns to name (one 'label<TAB>text' per line)")
        examples, where = _read_txt(path, text)
        layout = _Layout((1, 2), 0, txt=True)
    else:
        if suffix in (".tsv", ".csv"):
            rows, columns, lines, headerless, decision = _read_delimited(path, text, suffix, header, text_column,
                                                                         label_column)
        else:
            rows, columns, lines = _read_json(path, text, suffix)
            headerless, decision = False, "records"

        def where(i: int) -> str:
            return f"{path}, row {i + 1}" + (f" (line {lines[i]})" if lines is not None else "")

        hint = header is None and suffix in (".tsv", ".csv") and not headerless
        text_keys, label_key = _resolve_columns(text_column, label_column, columns, headerless, str(path), hint)
        examples = _examples(rows, text_keys, label_key, where)
        layout = _Layout(text_keys, label_key)
    _check_label_kinds([y for _, y in examples], where)
    if check_classes:
        _check_classes(examples, layout, str(path))
    if report is not None:
        how = "lines" if suffix == ".txt" else "rows"
        report(f"read {len(examples):,} {how} from {path}" + ("" if suffix in (".txt", ".json", ".jsonl")
                                                             else f": {decision}"))
    return examples, layout


SWAP_MIN_ROWS = 10
"""The fewest rows at which a label column with more classes than half its rows is refused."""


def _check_classes(examples: Sequence[tuple[Text, int | str]], layout: _Layout, source: str) -> None:
    """A DataError when the label column holds about one value per row (texts, not classes),
    naming the text column that looks like the label."""
    if not examples:
        return
    keys = layout.text_keys[:1 if isinstance(examples[0][0], str) else 2]
    message = _swap_message([y for _, y in examples], [_texts_at(examples, i) for i in range(len(keys))],
                            layout.label_key, keys, layout.name)
    if message is not None:
        if layout.txt:
            message += ("; a .txt file holds 'label<TAB>text' per line: write 'text<TAB>label' lines as .tsv "
                        "and name the columns")
        raise DataError(f"{source}: {message}")


def _texts_at(examples: Sequence[tuple[Text, int | str]], i: int) -> list[str]:
    return [t if isinstance(t, str) else t[i] for t, _ in examples]


def _swap_message(labels: Sequence, columns: Sequence[Sequence], label_key: Any, keys: Sequence,
                  name: Callable[[Any], str]) -> str | None:
    """Why ``labels`` look like texts (None when they look like classes): more distinct values
    than half the rows; and which of ``columns`` (values by row, keyed by ``keys``) holds few
    distinct values, the likely label."""
    n, counts = len(labels), Counter(y for y in labels if isinstance(y, str))
    if n < SWAP_MIN_ROWS or len(counts) * 2 <= n:  # integer ids are classes, however many
        return None
    message = (f"{name(label_key)}, the label, holds {len(counts):,} distinct values in {n:,} rows "
               f"({_show(list(counts), 3)}): texts, not classes")
    few = [(len(set(values)), key, values) for key, values in zip(keys, columns) if values]
    few = [item for item in few if item[0] * 2 <= n]
    if few:
        distinct, key, values = min(few, key=lambda item: item[0])
        swap = f"text_column: {label_key}, label_column: {key}"
        message += (f"; {name(key)} holds {distinct:,} distinct values ({_show(sorted(set(values)), 5)}): are the "
                    f"text and label columns swapped? If so, set {swap}")
    else:
        message += "; are the text and label columns swapped? Name them with text_column and label_column"
    return message


def _read_txt(path: Path, text: str) -> tuple[list[tuple[Text, int | str]], Callable[[int], str]]:
    lines = text.splitlines()
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


def _read_delimited(path: Path, text: str, suffix: str, header: bool | None, text_column: ColumnSpec,
                    label_column: str | int | None) -> tuple[list[dict], list, list[int], bool, str]:
    delimiter = "\t" if suffix == ".tsv" else ","
    quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
    raw: list[list[str]] = []
    lines: list[int] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
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
        header, decision = _header_decision(path, raw, text_column, label_column)
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


def _header_decision(path: Path, raw: list[list[str]], text_column: ColumnSpec,
                     label_column: str | int | None) -> tuple[bool, str]:
    """Whether the first row of a delimited file is a header, and the evidence; decided only on
    strong evidence:

    * data: its label cell (the last one, or ``label_column`` given by position) is an integer,
      or a label that other rows carry too;
    * a header: a cell other than the label cell is a known column name (``TEXT_COLUMNS``,
      ``LABEL_COLUMNS``, ``PAIR_COLUMNS``, ignoring case), or any cell is a name given in
      ``text_column``/``label_column``; or its label cell cannot be a label of this file (a name
      over integer labels, or no label: empty, or a non-integer number).

    Anything else (a label that occurs in no other row, next to cells that could be data: a
    known label word such as ``Quality`` alone is no evidence) is weak evidence either way: a
    DataError shows the first row and asks for ``header: true|false``. When the label column
    holds about one distinct value per row, the DataError names the likely swap of columns."""
    cells = [cell.strip() for cell in raw[0]]
    position = label_column if isinstance(label_column, int) and not isinstance(label_column, bool) else -1
    if not -len(cells) <= position < len(cells):
        return False, "no header row (the first row has too few cells for the label column)"
    label_at = position % len(cells)
    try:
        first = _parse_label(cells[label_at], "")
    except DataError:
        return True, f"header row taken: its label cell {cells[label_at]!r} is no label"
    if isinstance(first, int):
        return False, f"no header row (the first row's label cell {cells[label_at]!r} is an integer)"
    others = []
    for row in raw[1:]:
        if -len(row) <= position < len(row):
            try:
                others.append(_parse_label(row[position], ""))
            except DataError:
                pass
    if first in others:
        return False, f"no header row (the first row's label {first!r} is a label of other rows too)"
    given = _given_names(text_column, label_column)
    known = {name.casefold() for name in _KNOWN_COLUMNS}
    if any(cell in given or (i != label_at and cell.casefold() in known) for i, cell in enumerate(cells)):
        names = [cell for cell in cells if cell in given or cell.casefold() in known]
        return True, f"header row taken: {_show(names, 4)} " + ("is a column name" if len(names) == 1
                                                                   else "are column names")
    if others and all(isinstance(y, int) for y in others):
        return True, f"header row taken: its label cell {first!r} is a name, the other rows' labels are integers"
    columns = [[row[i].strip() for row in raw if i < len(row)] for i in range(len(cells)) if i != label_at]
    swap = _swap_message([first] + others, columns, label_at, [i for i in range(len(cells)) if i != label_at],
                         lambda key: f"column {key}")
    if swap is not None:
        raise DataError(f"{path}: {swap} (and whether the first row is a header is unclear: say header: true or "
                        "header: false)")
    counts = Counter(str(y) for y in others)
    single = ""
    if counts and min(counts.values()) >= 2:
        low, high = min(counts.values()), max(counts.values())
        single = (f" (as data it would be a class of one example, beside {len(counts):,} classes of {low:,}"
                  + ("" if low == high else f" to {high:,}") + " examples)")
    raise DataError(f"{path}: is the first row {_show_list(cells, 6)} a header or data? Its label {first!r} occurs "
                    f"in no other row{single} and no other cell is a known column name: weak evidence either way. "
                    "Say header: true or header: false in the run file (header=True or header=False in Python)")


def _given_names(text_column: ColumnSpec, label_column: str | int | None) -> set[str]:
    """The column names passed in ``text_column`` and ``label_column`` (``"a,b"`` as a and b too)."""
    given: set[str] = set()
    for spec in (text_column, label_column):
        if isinstance(spec, str):
            given.update([spec] + [part.strip() for part in spec.split(",")])
        elif isinstance(spec, (tuple, list)):
            given.update(part for part in spec if isinstance(part, str))
    return given


def _read_json(path: Path, text: str, suffix: str) -> tuple[list[dict], list, list[int] | None]:
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
