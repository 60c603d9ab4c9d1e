"""Columns of tabular rows (files with a header, JSON records, hub sets): which columns hold the
texts and the label (a default name matches ignoring case too), and the examples they give."""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, Sequence, Union

from .errors import DataError, _show_list
from .labels import Text, _parse_label

ColumnSpec = Union[str, int, Sequence[Union[str, int]], None]

# Column names tried, in order, when a file or hub set does not say which column holds what.
# Pairs come first: QNLI has 'question' and 'sentence', and must not be read as single sentences.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("premise", "hypothesis"),
                ("question1", "question2"), ("text_a", "text_b"), ("#1 String", "#2 String"))
TEXT_COLUMNS = ("sentence", "text", "review", "content")
LABEL_COLUMNS = ("label", "labels", "target", "sentiment", "gold_label", "is_duplicate", "Quality")
_KNOWN_COLUMNS = frozenset(TEXT_COLUMNS) | frozenset(LABEL_COLUMNS) | {c for pair in PAIR_COLUMNS for c in pair}


def _resolve_columns(text_column: ColumnSpec, label_column: str | int | None, columns: list, headerless: bool,
                     source: str, hint: bool = False) -> tuple[tuple, Any]:
    """(text keys, label key) for rows keyed by ``columns`` (names, or positions when headerless)."""
    tip = ("; the first row was taken as the header: if it is data, set header: false in the run file "
           "(header=False in Python)" if hint else "")
    text_keys = None
    if text_column is not None:
        text_keys = tuple(_keys(text_column, columns, headerless, source, "text"))
        if len(text_keys) not in (1, 2):
            raise DataError(f"{source}: text_column names one column, or two for a pair; got {text_column!r}")
    elif not headerless:
        pair = next((found for found in ((_named(a, columns), _named(b, columns)) for a, b in PAIR_COLUMNS)
                     if None not in found), None)
        single = next((found for found in map(lambda name: _named(name, columns), TEXT_COLUMNS) if found), None)
        if pair is None and single is None:
            looked = ", ".join("/".join(p) for p in PAIR_COLUMNS) + "; then " + ", ".join(TEXT_COLUMNS)
            raise DataError(f"{source}: no text column (looked for pairs {looked}); columns are "
                            f"{_show_list(columns)}{tip}")
        text_keys = pair if pair is not None else (single,)
    if label_column is not None:
        label_keys = _keys(label_column, columns, headerless, source, "label")
        if len(label_keys) != 1:
            raise DataError(f"{source}: label_column names one column; got {label_column!r}")
        label_key = label_keys[0]
    elif headerless:
        label_key = columns[-1]
    else:
        label_key = next((found for found in map(lambda name: _named(name, columns), LABEL_COLUMNS) if found), None)
        if label_key is None:
            raise DataError(f"{source}: no label column (looked for {', '.join(LABEL_COLUMNS)}); "
                            f"columns are {_show_list(columns)}{tip}")
    if text_keys is None:  # no header, no text column named: every column but the label
        text_keys = tuple(c for c in columns if c != label_key)
        if len(text_keys) not in (1, 2):
            raise DataError(f"{source}: a file without a header row has {len(columns)} columns; say which "
                            "by position, e.g. text_column=3, label_column=1 (0-based)")
    if label_key in text_keys:
        raise DataError(f"{source}: column {label_key!r} cannot be both text and label")
    return text_keys, label_key


def _named(name: str, columns: list) -> Any:
    """The column called ``name``: exactly, else the one column that matches ignoring case
    (``Review`` for ``review``); None when there is none."""
    if name in columns:
        return name
    matches = [c for c in columns if isinstance(c, str) and c.casefold() == name.casefold()]
    return matches[0] if len(matches) == 1 else None


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
                                f"positions 0..{len(columns) - 1}; got {what} column {item!r} (set header: true "
                                "(header=True in Python) if the first row names the columns)")
            if item not in columns:
                raise DataError(f"{source}: no {what} column {item!r}; columns are {_show_list(columns)}")
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
