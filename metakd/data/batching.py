"""Batching encoded data: padding collators, the quiz split, labels of encoded items, loaders."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from .errors import DataError
from .labels import _labels_in


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
