"""The error of the data package, and how its messages list values."""

from __future__ import annotations

from typing import Sequence


class DataError(ValueError):
    """Data cannot be used as given; the message names the file, column or split."""


def _show(values: Sequence, limit: int = 10, width: int = 40, brackets: str = "{}") -> str:
    """``{a, b, … (N in all)}``: the first ``limit`` values, each cut to ``width`` characters, for
    an error message: a message stays a line or two however many (and however long) the values."""
    items = list(values)
    shown = ", ".join(_short(repr(v) if isinstance(v, str) else str(v), width) for v in items[:limit])
    return brackets[0] + shown + (f", … ({len(items):,} in all)" if len(items) > limit else "") + brackets[1]


def _show_list(values: Sequence, limit: int = 20) -> str:
    """``['a', 'b', … (N in all)]``: ``_show`` in list brackets (column names, file names)."""
    return _show(values, limit, brackets="[]")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
