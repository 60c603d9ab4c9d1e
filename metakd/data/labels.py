"""Labels of classification examples: parsing raw labels, mapping label names to ids, and
checking labels against a model's number of classes."""

from __future__ import annotations

import numbers
import re
from typing import Any, Callable, Mapping, Sequence, Union

import torch

from .errors import DataError, _show

Text = Union[str, tuple[str, str]]
Example = tuple[Text, int]  # (text, label) or ((text_a, text_b), label)

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
                                f"(train labels: {_show(names)})" + _swapped_hint(names, len(train)))
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


def _swapped_hint(names: Sequence[str], rows: int) -> str:
    """A hint when the "labels" look like texts: about as many distinct values as rows."""
    if len(names) > 50 and len(names) > rows // 2:
        return (f"; {len(names):,} distinct labels in {rows:,} rows look like texts: are the text and label "
                "columns swapped?")
    return ""


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
