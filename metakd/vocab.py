"""Shared-vocabulary checks for token-level (causal-LM) distillation: the teacher's and the
student's next-token distributions are compared id by id, so both models must mean the same
token by the same id."""

from __future__ import annotations

from typing import Any

from torch import nn

from .models import ModelError


def output_vocab_size(model: nn.Module) -> int:
    """Width of the model's next-token logits (its output embedding), else ``config.vocab_size``."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    width = getattr(head, "out_features", None) or getattr(getattr(head, "weight", None), "shape", [None])[0]
    if width is None:
        width = getattr(getattr(model, "config", None), "vocab_size", None)
    if width is None:
        raise ModelError(f"cannot tell the output vocabulary of {type(model).__name__}: no output embedding "
                         "and no config.vocab_size")
    return int(width)


def check_tokenizers(teacher_tokenizer: Any, student_tokenizer: Any, truncate: bool = False) -> int:
    """Check that two tokenizers share a vocabulary and return its size.

    Identical vocabularies pass. Vocabularies that map the same token to the same id for every id
    below the smaller size, and differ only by extra tokens at the end, pass when ``truncate`` is
    set (the return value is the shared size) and raise otherwise. Any token whose id differs
    raises: distilling such models id by id would teach the wrong tokens.
    """
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab == s_vocab:
        return len(t_vocab)
    shared = min(len(t_vocab), len(s_vocab))
    t_by_id = {i: tok for tok, i in t_vocab.items() if i < shared}
    s_by_id = {i: tok for tok, i in s_vocab.items() if i < shared}
    differing = sorted(i for i in set(t_by_id) | set(s_by_id) if t_by_id.get(i) != s_by_id.get(i))
    if differing:
        examples = ", ".join(f"id {i}: {t_by_id.get(i)!r} vs {s_by_id.get(i)!r}" for i in differing[:3])
        raise ModelError(
            f"teacher and student tokenizers disagree on {len(differing)} of their first {shared} ids ({examples}); "
            "token-level distillation needs a shared vocabulary: pick a student from the teacher's model family "
            "or use task='classification', where each model tokenizes the raw text itself")
    if not truncate:
        raise ModelError(
            f"the teacher's tokenizer has {len(t_vocab)} tokens and the student's {len(s_vocab)}; they agree on the "
            f"first {shared} ids. Set truncate_vocab: true to distil over those {shared} shared ids only")
    return shared


def shared_vocab_size(teacher: nn.Module, student: nn.Module, truncate: bool = False) -> int | None:
    """The number of logits to compare: None when both output layers have the same width; the
    smaller width when they differ and ``truncate`` is set; otherwise a ModelError."""
    v_t, v_s = output_vocab_size(teacher), output_vocab_size(student)
    if v_t == v_s:
        return None
    if not truncate:
        raise ModelError(
            f"the teacher predicts {v_t} tokens and the student {v_s}: token-level distillation compares their "
            "next-token distributions id by id and needs a shared vocabulary. If the two tokenizers agree on the "
            f"first {min(v_t, v_s)} ids (metakd.vocab.check_tokenizers checks this; padded embedding matrices are "
            "the usual cause), set truncate_vocab: true")
    return min(v_t, v_s)


__all__ = ["check_tokenizers", "output_vocab_size", "shared_vocab_size"]
