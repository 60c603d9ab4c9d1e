"""The error of the data package, and how its messages list values."""

from __future__ import annotations

from typing import Sequence


class DataError(ValueError):
    """Data cannot be used as given; the message names the file, column or split."""


def _show(values: Sequence, limit: int = 10) -> str:
    """``{a, b, …}``: the first ``limit`` values, for an error message."""
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in list(values)[:limit])
    return "{" + shown + (", …" if len(values) > limit else "") + "}"
