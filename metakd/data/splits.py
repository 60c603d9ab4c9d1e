"""The validation split: carved from the training data by seed, unique by text, disjoint from the
quiz split and the evaluation data."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from .errors import DataError

VALIDATION_SEED_OFFSET = 7919
"""Added to the run's seed for the validation permutation, so it is not the quiz split's."""


def text_key(item: dict[str, Any]) -> tuple:
    """The identity of an encoded example's text: its token ids (the teacher's side of split
    inputs); two items with the same text have the same key."""
    ids = item["teacher"]["input_ids"] if "teacher" in item else item["input_ids"]
    return tuple(torch.as_tensor(ids).tolist())


def split_validation(dataset: Sequence, fraction: float, seed: int,
                     exclude: Iterable[Sequence] = ()) -> tuple[list, list]:
    """(train, validation): about ``fraction`` of ``dataset``'s distinct texts, drawn by ``seed``,
    from those that occur in none of the ``exclude`` data sets (the quiz split, the evaluation
    data); each validation text appears once, and every training item with that text leaves the
    training part, so the two share no text."""
    n = len(dataset)
    n_val = max(1, round(n * fraction))
    banned = {text_key(item) for data in exclude for item in data}
    keys = [text_key(dataset[i]) for i in range(n)]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET)).tolist()
    chosen: dict[tuple, int] = {}
    for i in order:
        if len(chosen) >= n_val:
            break
        if keys[i] not in banned and keys[i] not in chosen:
            chosen[keys[i]] = i
    train = [dataset[i] for i in range(n) if keys[i] not in chosen]
    if not chosen or not train:
        raise DataError(f"{n} training examples are too few to carve a validation split of {fraction:.0%} "
                        f"({len(chosen)} distinct texts available outside the quiz and evaluation data)")
    return train, [dataset[i] for i in sorted(chosen.values())]


__all__ = ["split_validation", "text_key"]
