"""Data: labelled text from the embedded default, local files, ../shared/data or the hub;
tokenization for teacher and student; quiz split; padding collator."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

Example = tuple[str, int]

# Column names tried, in order, when a file does not say which column holds what.
TEXT_COLUMNS = ("sentence", "text", "review", "content")
LABEL_COLUMNS = ("label", "labels", "target", "sentiment")
HUB_TASKS = {"glue/sst2": ("glue", "sst2", "sentence", "label", "train", "validation")}


class DataError(ValueError):
    """Data cannot be used as given; the message names the file, column or split."""


# ---------------------------------------------------------------------------- reading text
def read_labelled_file(path: str | Path, text_column: str | None = None,
                       label_column: str | None = None) -> list[Example]:
    """(text, label) pairs from a .tsv/.csv (with header) or .jsonl file; labels must be integers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif suffix in (".tsv", ".csv"):
        with path.open(newline="", encoding="utf-8") as fh:
            delimiter = "\t" if suffix == ".tsv" else ","
            quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
            rows = list(csv.DictReader(fh, delimiter=delimiter, quoting=quoting))
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .tsv, .csv or .jsonl")
    if not rows:
        raise DataError(f"{path} holds no examples")
    columns = list(rows[0].keys())
    text_key = _pick(text_column, TEXT_COLUMNS, columns, path, "text")
    label_key = _pick(label_column, LABEL_COLUMNS, columns, path, "label")
    examples = []
    for i, row in enumerate(rows):
        text, raw_label = row.get(text_key), row.get(label_key)
        if text is None or raw_label is None:
            missing = text_key if text is None else label_key
            raise DataError(f"{path}, row {i + 1}: no value in column {missing!r}")
        try:
            label = int(str(raw_label).strip())
        except ValueError:
            raise DataError(f"{path}, row {i + 1}: label {raw_label!r} is not an integer") from None
        examples.append((str(text).strip(), label))
    return examples


def _pick(wanted: str | None, candidates: Sequence[str], columns: list[str], path: Path, what: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{path}: no {what} column {wanted!r}; columns are {columns}")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise DataError(f"{path}: no {what} column (looked for {', '.join(candidates)}); columns are {columns}")


def load_task(spec: str, n_train: int | None = None, n_eval: int | None = None,
              seed: int = 0) -> dict[str, list[Example]]:
    """Train and eval examples for a data spec.

    ``"embedded"``: the generated sentiment task (``metakd.synthetic``). A directory with
    ``train.*`` and ``dev.*``/``validation.*``/``test.*`` files (e.g. ``../shared/data/sst2``).
    A single file: split 90/10 by seed. ``"glue/sst2"``: the Hugging Face hub (needs network).
    ``n_train``/``n_eval`` take a seeded random subset.
    """
    if spec == "embedded":
        from .synthetic import sentiment_splits

        splits = sentiment_splits(n_train=n_train or 4000, n_eval=n_eval or 1000, seed=seed)
        return {"train": splits["train"], "eval": splits["eval"]}
    if spec in HUB_TASKS:
        splits = _load_hub(spec)
    else:
        path = Path(spec)
        if path.is_dir():
            splits = {"train": read_labelled_file(_find(path, ("train",))),
                      "eval": read_labelled_file(_find(path, ("dev", "validation", "valid", "test")))}
        elif path.is_file():
            rows = read_labelled_file(path)
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
            cut = max(1, len(rows) // 10)
            splits = {"train": [rows[i] for i in order[cut:]], "eval": [rows[i] for i in order[:cut]]}
        else:
            raise DataError(f"data {spec!r} is not 'embedded', a known hub task ({', '.join(HUB_TASKS)}), "
                            "or an existing file or directory")
    return {"train": _subset(splits["train"], n_train, seed), "eval": _subset(splits["eval"], n_eval, seed + 1)}


def _find(directory: Path, stems: Sequence[str]) -> Path:
    for stem in stems:
        for suffix in (".tsv", ".csv", ".jsonl"):
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
    raise DataError(f"{directory}: no {'/'.join(stems)} file (.tsv, .csv or .jsonl)")


def _subset(rows: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or n >= len(rows):
        return rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in sorted(order[:n])]


def _load_hub(spec: str) -> dict[str, list[Example]]:
    import datasets

    name, config, text_key, label_key, train_split, eval_split = HUB_TASKS[spec]
    try:
        ds = datasets.load_dataset(name, config)
    except Exception as exc:  # noqa: BLE001 - network and hub errors come in many types
        raise DataError(f"cannot load {spec!r} from the Hugging Face hub: {exc}") from exc
    return {split: [(r[text_key], int(r[label_key])) for r in ds[hf_split]]
            for split, hf_split in (("train", train_split), ("eval", eval_split))}


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
    """Tokenize (text, label) pairs; with ``student_tokenizer`` each side gets its own ids."""
    if not examples:
        raise DataError("cannot encode an empty data set")
    texts = [t for t, _ in examples]
    labels = torch.tensor([y for _, y in examples], dtype=torch.long)

    def tok(t) -> list[dict[str, torch.Tensor]]:
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
    value, or a mapping {'teacher': id, 'student': id} for split inputs."""

    def pad(items: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
        out = {}
        for key in items[0]:
            value = pad_id if key == "input_ids" else 0
            out[key] = torch.nn.utils.rnn.pad_sequence([it[key] for it in items], batch_first=True,
                                                       padding_value=value)
        return out

    def collate(features: list[dict]) -> dict:
        labels = torch.stack([torch.as_tensor(f["labels"]) for f in features])
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
    return [int(dataset[i]["labels"]) for i in range(len(dataset))]


def loader(dataset: Sequence, batch_size: int, collate: Callable, shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)
