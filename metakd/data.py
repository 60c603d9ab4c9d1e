"""Data: labelled text (single texts or GLUE-style pairs) from the embedded default, local files,
../shared/data or the Hugging Face hub; language-modelling corpora; tokenization for teacher and
student; quiz split; padding collators.

Classification examples are ``(text, label)`` or ``((text_a, text_b), label)`` with integer labels
(``load_task`` maps label names to ids). Language-modelling corpora are lists of document strings
(``load_lm_corpus``), cut into token blocks by ``encode_lm``.
"""

from __future__ import annotations

import csv
import itertools
import json
import numbers
import re
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset

Text = Union[str, tuple[str, str]]
Example = tuple[Text, int]  # (text, label) or ((text_a, text_b), label)
ColumnSpec = Union[str, int, Sequence[Union[str, int]], None]

# Column names tried, in order, when a file or hub set does not say which column holds what.
# Pairs come first: QNLI has 'question' and 'sentence', and must not be read as single sentences.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"),
                ("question1", "question2"), ("text_a", "text_b"), ("#1 String", "#2 String"))
TEXT_COLUMNS = ("sentence", "text", "review", "content")
LABEL_COLUMNS = ("label", "labels", "target", "sentiment", "gold_label", "is_duplicate", "Quality")
_KNOWN_COLUMNS = frozenset(TEXT_COLUMNS) | frozenset(LABEL_COLUMNS) | {c for pair in PAIR_COLUMNS for c in pair}

CLASSIFICATION_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".txt")
LM_SUFFIXES = (".txt", ".raw", ".tokens")
EVAL_SPLITS = ("validation", "validation_matched", "dev", "valid", "test")  # hub eval split, first present


class HubTask(NamedTuple):
    """A classification set on the Hugging Face hub and where its fields are."""

    path: str
    config: str | None
    text_columns: tuple[str, ...]  # one column, or two for a pair
    label_column: str
    train_split: str
    eval_split: str


HUB_TASKS: dict[str, HubTask] = {
    "glue/sst2": HubTask("nyu-mll/glue", "sst2", ("sentence",), "label", "train", "validation"),
    "glue/cola": HubTask("nyu-mll/glue", "cola", ("sentence",), "label", "train", "validation"),
    "glue/mrpc": HubTask("nyu-mll/glue", "mrpc", ("sentence1", "sentence2"), "label", "train", "validation"),
    "glue/qnli": HubTask("nyu-mll/glue", "qnli", ("question", "sentence"), "label", "train", "validation"),
    "glue/rte": HubTask("nyu-mll/glue", "rte", ("sentence1", "sentence2"), "label", "train", "validation"),
    "glue/wnli": HubTask("nyu-mll/glue", "wnli", ("sentence1", "sentence2"), "label", "train", "validation"),
    "glue/qqp": HubTask("nyu-mll/glue", "qqp", ("question1", "question2"), "label", "train", "validation"),
    "glue/mnli": HubTask("nyu-mll/glue", "mnli", ("premise", "hypothesis"), "label", "train",
                         "validation_matched"),
    "imdb": HubTask("stanfordnlp/imdb", None, ("text",), "label", "train", "test"),
}


class DataError(ValueError):
    """Data cannot be used as given; the message names the file, column or split."""


# ---------------------------------------------------------------------------- labels
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _parse_label(raw: Any, where: str) -> int | str:
    """An integer id, or a label name (a non-numeric string, stripped)."""
    if raw is None:
        raise DataError(f"{where}: no label")
    if isinstance(raw, numbers.Integral):  # bool and numpy ints too
        return int(raw)
    if isinstance(raw, numbers.Real):
        if float(raw).is_integer():
            return int(raw)
        raise DataError(f"{where}: label {raw!r} is not an integer (regression targets are not supported)")
    if isinstance(raw, str):
        value = raw.strip()
        if not value:
            raise DataError(f"{where}: empty label")
        if value.isascii() and value.isdigit():  # the common case, fast
            return int(value)
        if _NUMBER.fullmatch(value):
            try:
                return int(value)
            except ValueError:
                number = float(value)
            if number.is_integer():
                return int(number)
            raise DataError(f"{where}: label {raw!r} is not an integer (regression targets are not supported)")
        return value
    raise DataError(f"{where}: label {raw!r} is neither an integer nor a label name")


def _check_label_kinds(labels: Sequence[int | str], where: Callable[[int], str]) -> None:
    """All integers or all names: a mix is a broken file, not a label set."""
    if not labels:
        return
    first = isinstance(labels[0], str)
    for i, y in enumerate(labels):
        if isinstance(y, str) != first:
            kind = "a name, not an integer id" if isinstance(y, str) else "an integer id, not a name"
            raise DataError(f"{where(i)}: label {y!r} is {kind}, unlike the first label {labels[0]!r}; "
                            "labels must be all integer ids or all names")


def _map_labels(splits: Mapping[str, list[tuple[Text, int | str]]], source: str,
                class_names: Sequence[str] | None = None) -> tuple[dict[str, list[Example]], list[str]]:
    """Integer ids for every split and the label names (index = id).

    Names: ids follow the sorted set of train labels; an eval label not among them is an error.
    Integers: kept; the names are ``str(id)`` for 0..max (or ``class_names`` from the hub).
    """
    train = splits["train"]
    named = any(isinstance(y, str) for _, y in train)
    if named:
        if any(not isinstance(y, str) for _, y in train):
            raise DataError(f"{source}: train labels mix integers and names")
        names = sorted({y for _, y in train})
        index = {name: i for i, name in enumerate(names)}
        out = {}
        for split, rows in splits.items():
            unknown = sorted({str(y) for _, y in rows if str(y) not in index})
            if unknown:
                raise DataError(f"{source}: {split} labels {_show(unknown)} do not occur in the train split "
                                f"(train labels: {names})")
            out[split] = [(t, index[str(y)]) for t, y in rows]
        return out, names
    top = -1
    for split, rows in splits.items():
        named_here = sorted({y for _, y in rows if isinstance(y, str)})
        if named_here:
            raise DataError(f"{source}: {split} labels {_show(named_here)} are names, but the train labels "
                            "are integer ids")
        negative = sorted({y for _, y in rows if y < 0})
        if negative:
            raise DataError(f"{source}: {split} split has negative labels {_show(negative)}; labels must be "
                            "ids 0, 1, ... (GLUE test splits mark unlabelled examples with -1: use a "
                            "labelled split)")
        top = max([top] + [y for _, y in rows])
    names = [str(i) for i in range(top + 1)]
    if class_names is not None and len(class_names) >= len(names):
        names = [str(n) for n in class_names]
    return {split: list(rows) for split, rows in splits.items()}, names  # type: ignore[misc]


def _show(values: Sequence, limit: int = 10) -> str:
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in list(values)[:limit])
    return "{" + shown + (", …" if len(values) > limit else "") + "}"


def _labels_in(data: Any) -> list[int]:
    """Class labels of examples ``(text, label)`` or encoded items ``{"labels": ...}``."""
    out = []
    for i in range(len(data)):
        item = data[i]
        if isinstance(item, Mapping):
            label = item["labels"]
            if isinstance(label, torch.Tensor) and label.dim() > 0:
                raise DataError("these labels are token sequences (a language-modelling data set); "
                                "class counts do not apply")
        else:
            label = item[1]
        if isinstance(label, torch.Tensor):
            label = label.item()
        if isinstance(label, str):
            raise DataError(f"label {label!r} is a name; map names to ids first (load_task does)")
        out.append(int(label))
    return out


def check_labels(data: Any, num_labels: int, what: str = "data") -> None:
    """Raise DataError unless every label of ``data`` lies in 0..num_labels-1.

    ``data``: examples ``(text, label)``, encoded items (``encode``), or a dict of such splits
    (``load_task``'s result; its ``label_names`` are skipped).
    """
    if isinstance(data, Mapping):
        for split, rows in data.items():
            if split != "label_names":
                check_labels(rows, num_labels, f"{what} ({split})" if what != "data" else f"{split} data")
        return
    if isinstance(num_labels, bool) or not isinstance(num_labels, numbers.Integral) or num_labels < 1:
        raise DataError(f"num_labels must be a positive integer, got {num_labels!r}")
    bad = sorted({y for y in _labels_in(data) if not 0 <= y < num_labels})
    if bad:
        raise DataError(f"{what}: labels {_show(bad)} outside 0..{num_labels - 1} "
                        f"(the model has {num_labels} labels)")


def infer_num_labels(splits: Any) -> int:
    """The number of classes: ``len(label_names)`` when given (``load_task``'s result), else the
    largest label over all splits + 1. ``splits``: that dict, a dict of splits, or one split."""
    if isinstance(splits, Mapping):
        parts = [rows for key, rows in splits.items() if key != "label_names"]
    else:
        parts = [splits]
    labels = [y for rows in parts for y in _labels_in(rows)]
    if not labels:
        raise DataError("cannot infer the number of labels of an empty data set")
    if min(labels) < 0:
        raise DataError(f"negative labels {_show(sorted({y for y in labels if y < 0}))}; labels must be 0, 1, ...")
    n = max(labels) + 1
    names = splits.get("label_names") if isinstance(splits, Mapping) else None
    if names is not None:
        if n > len(names):
            raise DataError(f"labels reach {n - 1} but there are only {len(names)} label names")
        n = len(names)
    return n


# ---------------------------------------------------------------------------- reading labelled files
def read_labelled_file(path: str | Path, text_column: ColumnSpec = None, label_column: str | int | None = None,
                       header: bool | None = None) -> list[tuple[Text, int | str]]:
    """Labelled examples from one file: ``(text, label)`` or ``((text_a, text_b), label)``.

    Labels come back as ``int`` when they are integers in the file (``"1"``, ``1``, ``1.0``) and
    as the stripped label name (``str``) otherwise; ``load_task`` maps names to ids. A file's
    labels must be all integers or all names; a non-integer number (``1.5``) or an empty label is
    an error.

    Formats, by suffix (case-insensitive):

    * ``.tsv`` (no quoting, as GLUE writes it) and ``.csv`` (standard quoting). ``header=None``
      detects the header: the first row is data when none of its cells is a known column name
      (or a name passed here) and its label cell (the last one, or ``label_column`` given by
      position) is an integer; else it is the header. ``header=True/False`` says so. A file
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
            rows, columns, lines, headerless = _read_delimited(path, suffix, header, text_column, label_column)
        else:
            rows, columns, lines = _read_json(path, suffix)
            headerless = False

        def where(i: int) -> str:
            return f"{path}, row {i + 1}" + (f" (line {lines[i]})" if lines is not None else "")

        hint = header is None and suffix in (".tsv", ".csv") and not headerless
        text_keys, label_key = _resolve_columns(text_column, label_column, columns, headerless, str(path), hint)
        examples = _examples(rows, text_keys, label_key, where)
    _check_label_kinds([y for _, y in examples], where)
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
                    label_column: str | int | None) -> tuple[list[dict], list, list[int], bool]:
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
        header = _looks_like_header(raw[0], text_column, label_column)
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
            what = f"the header has {width} ({columns})" if header else f"the first row has {width}"
            hint = "; a tab inside a text?" if suffix == ".tsv" and len(row) > width else ""
            raise DataError(f"{path}, row {i + 1} (line {lines[i]}): {len(row)} fields, but {what} "
                            f"(ragged rows){hint}")
        rows.append(dict(zip(columns, row)))
    return rows, columns, lines, not header


def _looks_like_header(first: list[str], text_column: ColumnSpec, label_column: str | int | None) -> bool:
    cells = [cell.strip() for cell in first]
    known = set(_KNOWN_COLUMNS)
    for spec in (text_column, label_column):
        if isinstance(spec, str):
            known.update([spec] + [s.strip() for s in spec.split(",")])
        elif isinstance(spec, (tuple, list)):
            known.update(s for s in spec if isinstance(s, str))
    if any(cell in known for cell in cells):
        return True
    position = label_column if isinstance(label_column, int) and not isinstance(label_column, bool) else -1
    try:
        return not isinstance(_parse_label(cells[position], ""), int)
    except (DataError, IndexError):
        return True


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


def _resolve_columns(text_column: ColumnSpec, label_column: str | int | None, columns: list, headerless: bool,
                     source: str, hint: bool = False) -> tuple[tuple, Any]:
    """(text keys, label key) for rows keyed by ``columns`` (names, or positions when headerless)."""
    tip = ("; if the first row is data rather than a header, pass header=False" if hint else "")
    text_keys = None
    if text_column is not None:
        text_keys = tuple(_keys(text_column, columns, headerless, source, "text"))
        if len(text_keys) not in (1, 2):
            raise DataError(f"{source}: text_column names one column, or two for a pair; got {text_column!r}")
    elif not headerless:
        pair = next((p for p in PAIR_COLUMNS if p[0] in columns and p[1] in columns), None)
        single = next((name for name in TEXT_COLUMNS if name in columns), None)
        if pair is None and single is None:
            looked = ", ".join("/".join(p) for p in PAIR_COLUMNS) + "; then " + ", ".join(TEXT_COLUMNS)
            raise DataError(f"{source}: no text column (looked for pairs {looked}); columns are {columns}{tip}")
        text_keys = pair if pair is not None else (single,)
    if label_column is not None:
        label_keys = _keys(label_column, columns, headerless, source, "label")
        if len(label_keys) != 1:
            raise DataError(f"{source}: label_column names one column; got {label_column!r}")
        label_key = label_keys[0]
    elif headerless:
        label_key = columns[-1]
    else:
        label_key = next((name for name in LABEL_COLUMNS if name in columns), None)
        if label_key is None:
            raise DataError(f"{source}: no label column (looked for {', '.join(LABEL_COLUMNS)}); "
                            f"columns are {columns}{tip}")
    if text_keys is None:  # no header, no text column named: every column but the label
        text_keys = tuple(c for c in columns if c != label_key)
        if len(text_keys) not in (1, 2):
            raise DataError(f"{source}: a file without a header row has {len(columns)} columns; say which "
                            "by position, e.g. text_column=3, label_column=1 (0-based)")
    if label_key in text_keys:
        raise DataError(f"{source}: column {label_key!r} cannot be both text and label")
    return text_keys, label_key


def _keys(spec: ColumnSpec, columns: list, headerless: bool, source: str, what: str) -> list:
    if isinstance(spec, str):
        items: list = [s.strip() for s in spec.split(",")] if spec not in columns and "," in spec else [spec]
    elif isinstance(spec, int):
        items = [spec]
    else:
        items = list(spec)  # type: ignore[arg-type]
    keys = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(columns):
                raise DataError(f"{source}: {what} column position {item} is out of range; "
                                f"there are {len(columns)} columns")
            keys.append(columns[item])
        elif isinstance(item, str):
            if headerless:
                raise DataError(f"{source}: the file has no header row, so its {len(columns)} columns are "
                                f"positions 0..{len(columns) - 1}; got {what} column {item!r} (pass header=True "
                                "if the first row names the columns)")
            if item not in columns:
                raise DataError(f"{source}: no {what} column {item!r}; columns are {columns}")
            keys.append(item)
        else:
            raise DataError(f"{source}: a {what} column is a name or a 0-based position, got {item!r}")
    return keys


def _examples(rows: Sequence[Mapping], text_keys: tuple, label_key: Any,
              where: Callable[[int], str]) -> list[tuple[Text, int | str]]:
    examples: list[tuple[Text, int | str]] = []
    for i, row in enumerate(rows):
        texts = []
        for key in text_keys:
            value = row.get(key)
            if value is None:
                raise DataError(f"{where(i)}: no value in column {key!r}")
            if not isinstance(value, (str, numbers.Number)):
                raise DataError(f"{where(i)}: column {key!r} holds {type(value).__name__}, not text")
            text = str(value).strip()
            if not text:
                raise DataError(f"{where(i)}: empty text in column {key!r}")
            texts.append(text)
        if label_key not in row or row[label_key] is None:
            raise DataError(f"{where(i)}: no value in column {label_key!r}")
        label = _parse_label(row[label_key], f"{where(i)}, column {label_key!r}")
        examples.append((texts[0] if len(texts) == 1 else (texts[0], texts[1]), label))
    return examples


# ---------------------------------------------------------------------------- load_task
def load_task(spec: str, n_train: int | None = None, n_eval: int | None = None, seed: int = 0, *,
              text_column: ColumnSpec = None, label_column: str | int | None = None,
              header: bool | None = None, eval_split: str | None = None) -> dict[str, Any]:
    """Train and eval examples of a classification task, and its label names.

    Returns ``{"train": [...], "eval": [...], "label_names": [...]}``; examples are
    ``(text, label)`` or ``((text_a, text_b), label)`` with integer labels, and
    ``label_names[i]`` names label ``i``.

    ``spec``:

    * ``"embedded"``: the generated sentiment task (``metakd.synthetic``).
    * a directory with a ``train.*`` file and a ``dev``/``validation``/``valid``/``test`` file
      (``.tsv``, ``.csv``, ``.jsonl``, ``.json`` or ``.txt``; e.g. ``../shared/data/sst2``).
    * a single file: split 90/10 by seed.
    * a name in ``HUB_TASKS`` (``"glue/sst2"``, ``"glue/mrpc"``, ``"glue/qnli"``, ``"glue/rte"``,
      ``"glue/qqp"``, ``"glue/mnli"`` (eval: validation_matched), ``"imdb"`` (eval: test), ...), or
      ``"hub:NAME[:CONFIG]"`` for any hub set: its ``train`` split and ``eval_split`` (default:
      the first of validation, validation_matched, dev, valid, test). Needs network (or the hub
      cache).

    Files are read by ``read_labelled_file`` (``text_column``, ``label_column`` and ``header``
    go to it, and pick the columns of hub sets too). Labels: integer labels keep their values
    (names ``"0"``, ``"1"``, ...; hub sets give their class names); label names are mapped to ids
    in the sorted order of the train labels (of the whole file for a single file), and an eval
    label that train lacks is an error. ``n_train``/``n_eval`` take a seeded random subset that
    keeps the file order; the label mapping does not depend on them.
    """
    class_names = None
    if spec == "embedded":
        if text_column is not None or label_column is not None or header is not None:
            raise DataError("text_column, label_column and header do not apply to the embedded task")
        from .synthetic import sentiment_splits

        splits = sentiment_splits(n_train=n_train or 4000, n_eval=n_eval or 1000, seed=seed)
        mapped, names = _map_labels({"train": splits["train"], "eval": splits["eval"]}, "embedded")
        return {"train": mapped["train"], "eval": mapped["eval"], "label_names": names}
    if spec in HUB_TASKS or spec.startswith("hub:"):
        raw, class_names = _load_hub_task(spec, text_column, label_column, eval_split)
        mapped, names = _map_labels(raw, spec, class_names)
    else:
        path = Path(spec)
        read = dict(text_column=text_column, label_column=label_column, header=header)
        if path.is_dir():
            raw = {"train": read_labelled_file(_find(path, ("train",)), **read),
                   "eval": read_labelled_file(_find(path, ("dev", "validation", "valid", "test", "dev_matched",
                                                           "validation_matched")), **read)}
            mapped, names = _map_labels(raw, str(path))
        elif path.is_file():
            rows, names = _map_labels({"train": read_labelled_file(path, **read)}, str(path))
            rows = rows["train"]
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
            cut = max(1, len(rows) // 10)
            if len(rows) - cut < 1:
                raise DataError(f"{path}: {len(rows)} example(s) are too few to split into train and eval")
            mapped = {"train": [rows[i] for i in order[cut:]], "eval": [rows[i] for i in order[:cut]]}
        else:
            raise DataError(f"data {spec!r} is not 'embedded', a known hub task ({', '.join(HUB_TASKS)}), "
                            "'hub:NAME[:CONFIG]', or an existing file or directory")
    return {"train": _subset(mapped["train"], n_train, seed), "eval": _subset(mapped["eval"], n_eval, seed + 1),
            "label_names": names}


def _find(directory: Path, stems: Sequence[str]) -> Path:
    for stem in stems:
        for suffix in CLASSIFICATION_SUFFIXES:
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
    raise DataError(f"{directory}: no {'/'.join(stems)} file ({', '.join(CLASSIFICATION_SUFFIXES)}); "
                    f"found {sorted(p.name for p in directory.iterdir())}")


def _subset(rows: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or n >= len(rows):
        return rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in sorted(order[:n])]


# ---------------------------------------------------------------------------- the hub
def _hub_load(name: str, path: str, config: str | None, **kwargs: Any) -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise DataError(f"{name!r} comes from the Hugging Face hub: install the 'datasets' package") from exc
    try:
        return datasets.load_dataset(path, config, **kwargs) if config else datasets.load_dataset(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network and hub errors come in many types
        where = f"hub dataset {path!r}" + (f", config {config!r}" if config else "")
        raise DataError(f"cannot load {name!r} ({where}) from the Hugging Face hub; this needs network access "
                        f"unless the set is in the local hub cache: {type(exc).__name__}: {exc}") from exc


def _parse_hub_spec(spec: str) -> tuple[str, str | None]:
    name, _, config = spec[len("hub:"):].partition(":")
    if not name:
        raise DataError(f"{spec!r}: write hub:NAME or hub:NAME:CONFIG")
    return name, config or None


def _pick_split(ds: Any, wanted: str | None, name: str, role: str) -> str:
    available = list(ds.keys())
    if wanted is not None:
        if wanted not in available:
            raise DataError(f"hub dataset {name!r} has no {role} split {wanted!r}; its splits are {available}")
        return wanted
    found = next((s for s in EVAL_SPLITS if s in available), None)
    if found is None:
        raise DataError(f"hub dataset {name!r} has no eval split (looked for {', '.join(EVAL_SPLITS)}); its "
                        f"splits are {available}; pass eval_split")
    return found


def _load_hub_task(spec: str, text_column: ColumnSpec, label_column: str | int | None,
                   eval_split: str | None) -> tuple[dict[str, list[tuple[Text, int | str]]], list[str] | None]:
    if spec in HUB_TASKS:
        task = HUB_TASKS[spec]
        path, config, train_split = task.path, task.config, task.train_split
        text_column = text_column if text_column is not None else task.text_columns
        label_column = label_column if label_column is not None else task.label_column
        eval_split = eval_split or task.eval_split
    else:
        (path, config), train_split = _parse_hub_spec(spec), "train"
    ds = _hub_load(spec, path, config)
    out: dict[str, list[tuple[Text, int | str]]] = {}
    class_names = None
    for role, wanted in (("train", train_split), ("eval", eval_split)):
        split = _pick_split(ds, wanted, spec, role)
        part = ds[split]
        source = f"hub dataset {spec!r}, split {split!r}"
        if len(part) == 0:
            raise DataError(f"{source} is empty")
        columns = list(part.column_names)
        text_keys, label_key = _resolve_columns(text_column, label_column, columns, False, source)
        rows = [dict(zip(text_keys + (label_key,), values))
                for values in zip(*(list(part[k]) for k in text_keys + (label_key,)))]

        def where(i: int, source: str = source) -> str:
            return f"{source}, row {i + 1}"

        out[role] = _examples(rows, text_keys, label_key, where)
        _check_label_kinds([y for _, y in out[role]], where)
        if role == "train":
            feature = getattr(part, "features", {}).get(label_key)
            class_names = list(feature.names) if getattr(feature, "names", None) else None
    return out, class_names


# ---------------------------------------------------------------------------- language modelling
class HubCorpus(NamedTuple):
    """A language-modelling corpus on the hub. ``rows``: 'lines' (WikiText: rows are lines of
    articles, joined and cut at the top-level headings) or 'documents' (one row, one document)."""

    path: str
    config: str | None
    text_column: str
    train_split: str
    eval_split: str | None  # None: split the train documents (``split``, ``eval_fraction``)
    rows: str
    max_documents: int | None  # stream only the first documents of each split (None: load it whole)


_WIKITEXT2 = HubCorpus("Salesforce/wikitext", "wikitext-2-raw-v1", "text", "train", "test", "lines", None)
LM_CORPORA: dict[str, HubCorpus] = {
    "wikitext": _WIKITEXT2, "wikitext2": _WIKITEXT2, "wikitext-2": _WIKITEXT2,
    "wikitext-103": HubCorpus("Salesforce/wikitext", "wikitext-103-raw-v1", "text", "train", "test", "lines", None),
    "openwebtext": HubCorpus("Skylion007/openwebtext", None, "text", "train", None, "documents", 10_000),
}
LM_SPLITS = ("random", "tail", "contiguous")


def load_lm_corpus(spec: str | Path, *, eval_fraction: float = 0.1, seed: int = 0, split: str | None = None,
                   max_documents: int | None = None, text_column: str | None = None,
                   eval_split: str | None = None) -> dict[str, list[str]]:
    """Documents for causal-LM distillation: ``{"train": [str, ...], "eval": [str, ...]}``.

    ``spec``:

    * a text file (``.txt``, ``.raw``, ``.tokens``), cut into documents and split:
      ``split="random"``: blank-line-separated documents, ``eval_fraction`` of them to eval by
      ``seed`` (default for files named like ``openwebtext*``); ``"contiguous"``: the text cut once
      at the first line end after ``1 - eval_fraction`` of its characters, one document each side
      (default for ``*shakespeare*`` paths); ``"tail"``: blank-line-separated documents, the last
      ``eval_fraction`` of them to eval (default for any other file).
    * a directory: with ``*train*`` and ``*test*``/``*valid*`` files, train on train and evaluate
      on test (else valid); without a train file, train on valid and evaluate on test (the
      shared ``wikitext2/``, as its README says); with a single text file, as that file. WikiText
      files (``wiki.*``, ``.raw``, ``.tokens``) are cut into articles at their `` = Title = ``
      lines, other files at blank lines.
    * ``"wikitext"`` (wikitext-2-raw-v1; also ``"wikitext-103"``) or ``"openwebtext"`` (the first
      ``max_documents``, default 10,000, streamed, split by seed) from the hub, or
      ``"hub:NAME[:CONFIG]"`` (one row, one document; column ``text_column``, default ``text``;
      train split ``train``, eval ``eval_split`` or the first of validation/dev/valid/test, else a
      split of train). Needs network (or the hub cache). These names come before paths: write
      ``./wikitext`` for a local folder of that name.

    Whitespace-only documents are dropped; an empty corpus or split is a DataError.
    """
    if not 0 < eval_fraction < 1:
        raise DataError(f"eval_fraction must lie in (0, 1), got {eval_fraction}")
    if split is not None and split not in LM_SPLITS:
        raise DataError(f"split must be one of {', '.join(LM_SPLITS)}, got {split!r}")
    name = str(spec)
    if name in LM_CORPORA or name.startswith("hub:"):
        return _lm_from_hub(name, eval_fraction, seed, split, max_documents, text_column, eval_split)
    path = Path(spec)
    if path.is_dir():
        return _lm_from_directory(path, eval_fraction, seed, split)
    if path.is_file():
        return _lm_from_file(path, eval_fraction, seed, split)
    raise DataError(f"corpus {name!r} is not a text file, a directory, a known corpus "
                    f"({', '.join(LM_CORPORA)}) or 'hub:NAME[:CONFIG]'")


def _read_corpus_file(path: Path) -> str:
    if path.suffix.lower() not in LM_SUFFIXES:
        raise DataError(f"{path}: unsupported corpus file type {path.suffix or '(no suffix)'!r}; "
                        f"use {', '.join(LM_SUFFIXES)}")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DataError(f"{path} is empty")
    return text


def _is_wikitext(path: Path) -> bool:
    return path.name.lower().startswith("wiki.") or path.suffix.lower() in (".raw", ".tokens")


def paragraphs(text: str) -> list[str]:
    """Documents of a text separated by blank lines (whitespace-only lines); each keeps its inner
    line breaks and indentation, without the surrounding newlines."""
    parts = re.split(r"\n(?:[ \t]*\n)+", text)
    return [p.strip("\n") for p in parts if p.strip()]


_WIKI_TITLE = re.compile(r"^ = [^=].* = *$", re.MULTILINE)


def wikitext_articles(text: str) -> list[str]:
    """WikiText cut into articles at the top-level `` = Title = `` lines (not `` = = Section = = ``).
    The articles, joined, give back the text from the first title on."""
    starts = [m.start() for m in _WIKI_TITLE.finditer(text)]
    if not starts:
        return [text] if text.strip() else []
    pieces = [text[:starts[0]]] + [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    return [p for p in pieces if p.strip()]


def _documents(path: Path) -> list[str]:
    text = _read_corpus_file(path)
    return wikitext_articles(text) if _is_wikitext(path) else paragraphs(text)


def _lm_from_file(path: Path, eval_fraction: float, seed: int, split: str | None) -> dict[str, list[str]]:
    if split is None:
        lowered = f"{path.parent.name}/{path.name}".lower()
        split = "random" if "openwebtext" in lowered else "contiguous" if "shakespeare" in lowered else "tail"
    if split == "contiguous":
        return _contiguous(_read_corpus_file(path), eval_fraction, str(path))
    return _split_documents(_documents(path), split, eval_fraction, seed, str(path))


def _contiguous(text: str, eval_fraction: float, source: str) -> dict[str, list[str]]:
    """One cut at the first line end after ``1 - eval_fraction`` of the characters."""
    end = text.find("\n", int(len(text) * (1 - eval_fraction)))
    cut = len(text) if end < 0 else end + 1
    if not text[:cut].strip() or not text[cut:].strip():
        raise DataError(f"{source}: too short to cut {eval_fraction:.0%} off for eval at a line end")
    return {"train": [text[:cut]], "eval": [text[cut:]]}


def _split_documents(docs: list[str], split: str, eval_fraction: float, seed: int,
                     source: str) -> dict[str, list[str]]:
    if split == "contiguous":
        return _contiguous("\n\n".join(docs), eval_fraction, source)
    if len(docs) < 2:
        raise DataError(f"{source}: {len(docs)} document(s); need at least 2 to split into train and eval")
    n_eval = min(len(docs) - 1, max(1, round(len(docs) * eval_fraction)))
    if split == "tail":
        return {"train": docs[:-n_eval], "eval": docs[-n_eval:]}
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_eval])
    return {"train": [d for i, d in enumerate(docs) if i not in held],
            "eval": [d for i, d in enumerate(docs) if i in held]}


def _lm_from_directory(path: Path, eval_fraction: float, seed: int, split: str | None) -> dict[str, list[str]]:
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in LM_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"{path}: no corpus file ({', '.join(LM_SUFFIXES)}); found "
                        f"{sorted(p.name for p in path.iterdir())}")

    def named(*words: str) -> Path | None:
        return next((p for p in files if any(w in p.name.lower() for w in words)), None)

    train, valid, test = named("train"), named("valid", "dev"), named("test")
    if train is not None and (test or valid) is not None:
        pair = (train, test or valid)
    elif train is None and valid is not None and test is not None:
        pair = (valid, test)
    elif len(files) == 1:
        return _lm_from_file(files[0], eval_fraction, seed, split)
    else:
        raise DataError(f"{path}: cannot tell the train and eval files among {[p.name for p in files]} "
                        "(name them *train* and *test*/*valid*, or pass a single file)")
    out = {"train": _documents(pair[0]), "eval": _documents(pair[1])}
    for role, file in zip(("train", "eval"), pair):
        if not out[role]:
            raise DataError(f"{file} holds no documents")
    return out


def _lm_from_hub(name: str, eval_fraction: float, seed: int, split: str | None, max_documents: int | None,
                 text_column: str | None, eval_split: str | None) -> dict[str, list[str]]:
    if name in LM_CORPORA:
        src = LM_CORPORA[name]
    else:
        path, config = _parse_hub_spec(name)
        src = HubCorpus(path, config, "text", "train", None, "documents", None)
    column = text_column or src.text_column
    limit = max_documents if max_documents is not None else src.max_documents
    if limit is not None and limit < 1:
        raise DataError(f"max_documents must be positive, got {limit}")
    ds = _hub_load(name, src.path, src.config, **({"streaming": True} if limit is not None else {}))
    available = list(ds.keys())
    if src.train_split not in available:
        raise DataError(f"hub corpus {name!r} has no split {src.train_split!r}; its splits are {available}")
    held_split = eval_split or src.eval_split
    if held_split is None and name not in LM_CORPORA:
        held_split = next((s for s in EVAL_SPLITS if s in available), None)
    if held_split is not None and held_split not in available:
        raise DataError(f"hub corpus {name!r} has no split {held_split!r}; its splits are {available}")

    def documents(split_name: str) -> list[str]:
        part = ds[split_name]
        column_names = getattr(part, "column_names", None)
        if limit is None and column_names and column in column_names:
            part = ({column: value} for value in part[column])  # a whole split: read the column at once
        rows = []
        for i, row in enumerate(itertools.islice(part, limit)):
            if column not in row:
                raise DataError(f"hub corpus {name!r}, split {split_name!r}: no column {column!r}; "
                                f"columns are {list(row)}")
            value = row[column]
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise DataError(f"hub corpus {name!r}, split {split_name!r}, row {i + 1}: column {column!r} "
                                f"holds {type(value).__name__}, not text")
            rows.append(value)
        if src.rows == "lines":
            docs = wikitext_articles("".join(r if r.endswith("\n") else r + "\n" for r in rows))
        else:
            docs = [r for r in rows if r.strip()]
        if not docs:
            raise DataError(f"hub corpus {name!r}, split {split_name!r} holds no documents")
        return docs

    train = documents(src.train_split)
    if held_split is not None:
        return {"train": train, "eval": documents(held_split)}
    return _split_documents(train, split or "random", eval_fraction, seed, f"hub corpus {name!r}")


def encode_lm(documents: Sequence[str] | str, tokenizer, block_size: int, stride: int | None = None) -> EncodedDataset:
    """Blocks of ``block_size`` tokens for causal-LM training and evaluation.

    Each document is tokenized without special tokens; the documents are joined into one token
    stream with the tokenizer's eos token between them (its sep token when it has no eos); the
    stream is cut into windows of ``block_size`` tokens starting every ``stride`` tokens
    (default ``block_size``: disjoint blocks). The ragged tail that does not fill a whole window
    is dropped, so there is no padding: every item is ``{"input_ids", "attention_mask" (all 1),
    "labels"}`` of length ``block_size``, with ``labels`` = ``input_ids`` (the shift happens in
    the loss). With ``stride < block_size`` the windows overlap, and in each window after the
    first the ``block_size - stride`` tokens already seen are context only (label -100), so every
    token is scored once (sliding-window perplexity).
    """
    if isinstance(documents, str):
        documents = [documents]
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise DataError(f"block_size must be an integer >= 2, got {block_size!r}")
    stride = block_size if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= block_size:
        raise DataError(f"stride must be an integer in 1..block_size ({block_size}), got {stride!r}")
    docs = [d for d in documents if isinstance(d, str) and d.strip()]
    if not docs:
        raise DataError("cannot encode an empty corpus (no non-blank documents)")
    sep = getattr(tokenizer, "eos_token_id", None)
    if sep is None:
        sep = getattr(tokenizer, "sep_token_id", None)
    if sep is None and len(docs) > 1:
        raise DataError("the tokenizer has no eos (or sep) token to put between documents")
    encoded = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]
    stream: list[int] = []
    for i, ids in enumerate(encoded):
        if i:
            stream.append(sep)
        stream.extend(ids)
    if len(stream) < block_size:
        raise DataError(f"the corpus has {len(stream)} tokens, fewer than one block of {block_size}")
    ids = torch.tensor(stream, dtype=torch.long)
    ones = torch.ones(block_size, dtype=torch.long)
    items = []
    for start in range(0, len(stream) - block_size + 1, stride):
        block = ids[start:start + block_size].clone()
        labels = block.clone()
        if start and stride < block_size:
            labels[:block_size - stride] = -100
        items.append({"input_ids": block, "attention_mask": ones.clone(), "labels": labels})
    return EncodedDataset(items)


# ---------------------------------------------------------------------------- tokenization
class EncodedDataset(Dataset):
    """Tokenized examples: each item a dict of 1-D tensors plus ``labels`` (or ``teacher`` and
    ``student`` sub-dicts when the two models tokenize differently)."""

    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def encode(examples: Sequence[Example], tokenizer, max_length: int = 128,
           student_tokenizer=None) -> EncodedDataset:
    """Tokenize ``(text, label)`` or ``((text_a, text_b), label)`` examples (all one kind); with
    ``student_tokenizer`` each side gets its own ids. Pairs go to the tokenizer as two sequences
    (``tokenizer(texts_a, texts_b, truncation=True, max_length=...)``), so each model gets its own
    separators and ``token_type_ids``. Labels must be integer ids."""
    if not examples:
        raise DataError("cannot encode an empty data set")
    texts = [t for t, _ in examples]
    is_pair = [isinstance(t, (tuple, list)) for t in texts]
    pairs = all(is_pair)
    if any(is_pair) and not pairs:
        raise DataError("examples mix single texts and text pairs")
    if pairs and any(len(t) != 2 for t in texts):
        raise DataError("a text pair has exactly two texts")
    raw_labels = [y for _, y in examples]
    names = [y for y in raw_labels if isinstance(y, str)]
    if names:
        raise DataError(f"labels must be integer ids, got names like {names[0]!r}; map them first (load_task does)")
    labels = torch.tensor(raw_labels, dtype=torch.long)

    def tok(t) -> list[dict[str, torch.Tensor]]:
        if pairs:
            enc = t([a for a, _ in texts], [b for _, b in texts], truncation=True, max_length=max_length)
        else:
            enc = t(texts, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{k: torch.tensor(enc[k][i]) for k in keys} for i in range(len(texts))]

    first = tok(tokenizer)
    if student_tokenizer is None:
        items = [dict(f, labels=labels[i]) for i, f in enumerate(first)]
    else:
        second = tok(student_tokenizer)
        items = [{"teacher": a, "student": b, "labels": labels[i]} for i, (a, b) in enumerate(zip(first, second))]
    return EncodedDataset(items)


# ---------------------------------------------------------------------------- batching
def make_collator(pad_ids: Mapping[str, int] | int = 0) -> Callable[[list[dict]], dict]:
    """Pad variable-length items to the longest in the batch. ``pad_ids`` is the input-id pad
    value, or a mapping {'teacher': id, 'student': id} for split inputs. Class labels (scalars)
    are stacked; token labels (language modelling, 1-D) are padded with -100, the ignored index."""

    def pad(items: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
        out = {}
        for key in items[0]:
            value = pad_id if key == "input_ids" else 0
            out[key] = torch.nn.utils.rnn.pad_sequence([it[key] for it in items], batch_first=True,
                                                       padding_value=value)
        return out

    def stack_labels(features: list[dict]) -> torch.Tensor:
        labels = [torch.as_tensor(f["labels"]) for f in features]
        if labels[0].dim() == 0:
            return torch.stack(labels)
        return torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)

    def collate(features: list[dict]) -> dict:
        labels = stack_labels(features)
        if "teacher" in features[0]:
            ids = pad_ids if isinstance(pad_ids, Mapping) else {"teacher": pad_ids, "student": pad_ids}
            return {"teacher": pad([f["teacher"] for f in features], ids["teacher"]),
                    "student": pad([f["student"] for f in features], ids["student"]), "labels": labels}
        pid = pad_ids if isinstance(pad_ids, int) else pad_ids["student"]
        batch = pad([{k: v for k, v in f.items() if k != "labels"} for f in features], pid)
        batch["labels"] = labels
        return batch

    return collate


def split_quiz(dataset: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, quiz) split of a data set's items by seed."""
    n = len(dataset)
    n_quiz = max(1, round(n * fraction))
    if n - n_quiz < 1:
        raise DataError(f"{n} training examples are too few to carve a quiz split of {fraction:.0%}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    quiz = set(order[:n_quiz])
    return [dataset[i] for i in range(n) if i not in quiz], [dataset[i] for i in sorted(quiz)]


def labels_of(dataset: Sequence) -> list[int]:
    """Class labels of encoded items; DataError for token-sequence (language-modelling) labels."""
    return _labels_in(dataset)


def loader(dataset: Sequence, batch_size: int, collate: Callable, shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)
