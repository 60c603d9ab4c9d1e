"""The error of a model that cannot be used as asked (its own module: the model modules and
``quantization`` raise it, and none of them needs another to do so)."""

from __future__ import annotations


class ModelError(ValueError):
    """A model cannot be used as asked; the message says why and what to do."""


__all__ = ["ModelError"]
