"""Batching encoded data: padding collators, the quiz split, labels of encoded items, loaders."""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Sequence

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


def _text_key(item: Any) -> Hashable:
    """What makes two items the same text: the text (or pair) of a ``(text, label)`` example, the
    input tensors (everything but ``labels``) of an encoded item, else the item itself."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (str, tuple, list)):
        text = item[0]
        return tuple(text) if isinstance(text, list) else text
    if isinstance(item, Mapping):
        return tuple((k, _text_key(v)) for k, v in sorted(item.items()) if k != "labels")
    if isinstance(item, torch.Tensor):
        return (str(item.dtype), tuple(item.shape), item.detach().cpu().numpy().tobytes())
    try:
        hash(item)
    except TypeError:
        return repr(item)
    return item


def split_quiz(dataset: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, quiz) split of a data set's items by seed, disjoint by text: all
    copies of a text (a pair: of the pair; an encoded item: of its input ids) land on the same
    side, so no quiz text is also a training text. Items are drawn in a seeded random order and
    each one takes its copies along, until the quiz holds ``round(fraction·n)`` items (or a few
    more, when the last text drawn has copies); without duplicates this is the plain split by
    index. Both sides keep the data set's order."""
    n = len(dataset)
    n_quiz = max(1, round(n * fraction))
    if n - n_quiz < 1:
        raise DataError(f"{n} training examples are too few to carve a quiz split of {fraction:.0%}")
    groups: dict[Hashable, list[int]] = {}
    keys = []
    for i in range(n):
        key = _text_key(dataset[i])
        keys.append(key)
        groups.setdefault(key, []).append(i)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    quiz: set[int] = set()
    for i in order:
        if len(quiz) >= n_quiz:
            break
        quiz.update(groups[keys[i]])
    if len(quiz) == n:
        raise DataError(f"the {n} training examples hold too few distinct texts ({len(groups)}) to carve a quiz "
                        f"split of {fraction:.0%} that shares no text with the training part")
    return [dataset[i] for i in range(n) if i not in quiz], [dataset[i] for i in sorted(quiz)]


def labels_of(dataset: Sequence) -> list[int]:
    """Class labels of encoded items; DataError for token-sequence (language-modelling) labels."""
    return _labels_in(dataset)


def loader(dataset: Sequence, batch_size: int, collate: Callable, shuffle: bool, seed: int = 0,
           generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader of collated batches; with ``shuffle`` each pass draws its order from
    ``generator`` (advancing it), or from a fresh generator seeded by ``seed``."""
    if shuffle and generator is None:
        generator = torch.Generator().manual_seed(seed)
    elif not shuffle:
        generator = None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)
