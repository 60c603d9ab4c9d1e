"""Tokenization: classification examples (``encode``) and language-modelling corpora
(``encode_lm``) into an ``EncodedDataset`` of tensors."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from .errors import DataError
from .labels import Example


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
