"""The data of a run: read (``load_data``), its labels counted and numbered as a trained classifier
numbers them (``align_label_names``), tokenized (``encode_splits``)."""

from __future__ import annotations

from typing import Any

import torch

from . import data as data_mod
from .config import ConfigError
from .messages import log as _log
from .run_config import RunConfig


def load_data(run: RunConfig, seed: int | None = None, report: bool = True) -> dict[str, Any]:
    """Raw splits: {"train", "eval"} lists (and "label_names" for classification). ``report``:
    say what was read (rows, the header decision, overlaps); False when this run has said it
    already (a second read of the same files)."""
    seed = data_seed(run) if seed is None else seed
    if run.task == "causal_lm":
        return data_mod.load_lm_corpus(run.data, seed=seed)
    return data_mod.load_task(run.data, run.n_train, run.n_eval, seed, text_column=run.text_column,
                              label_column=run.label_column, header=run.header,
                              report=_log if report else _quiet, encoding=run.encoding,
                              allow_eval_overlap=run.allow_eval_overlap)


def data_seed(run: RunConfig) -> int:
    """The seed of the run's n_train / n_eval subsets: ``data_seed``, else ``distill.seed``."""
    return run.distill.seed if run.data_seed is None else run.data_seed


def teacher_training_split(run: RunConfig, report: bool = True) -> dict[str, Any]:
    """The splits the teacher fine-tunes on: ``load_data`` with ``finetune.n_train``; with
    ``finetune.disjoint``, the training examples whose texts are not in the distillation's
    ``n_train`` subset (then ``finetune.n_train`` of them, a seeded subset)."""
    import dataclasses

    ft = run.finetune
    if not ft.get("disjoint"):
        sized = run if ft["n_train"] is None else dataclasses.replace(run, n_train=int(ft["n_train"]))
        return load_data(sized, report=report)
    pool = {text for text, _ in load_data(run, report=report)["train"]}
    splits = load_data(dataclasses.replace(run, n_train=None, finetune=dict(ft, disjoint=False)), report=False)
    rest = [example for example in splits["train"] if example[0] not in pool]
    if not rest:
        raise data_mod.DataError(f"finetune.disjoint: every training text is in the distillation's n_train="
                                 f"{run.n_train} subset; lower n_train to leave the teacher examples of its own")
    if ft["n_train"] is not None:
        rest = _subset(rest, int(ft["n_train"]), data_seed(run))
    (_log if report else _quiet)(f"finetune.disjoint: the teacher trains on {len(rest)} of the "
                                 f"{len(splits['train']) - len(pool)} training examples outside the "
                                 f"distillation's {len(pool)}")
    return dict(splits, train=rest)


def _quiet(message: str) -> None:
    """A ``report`` that says nothing (``None`` would turn some reports into Python warnings)."""


def encode_splits(run: RunConfig, splits: dict[str, Any], tokenizer, student_tokenizer=None) -> dict[str, Any]:
    """Tokenized train and eval sets; LM corpora are cut into blocks of ``distill.max_length``."""
    length = run.distill.max_length
    if run.task == "causal_lm":
        out = {k: data_mod.encode_lm(splits[k], tokenizer, length) for k in ("train", "eval")}
        if run.n_train is not None:
            out["train"] = _subset(out["train"], run.n_train, data_seed(run))
        if run.n_eval is not None:
            out["eval"] = _subset(out["eval"], run.n_eval, data_seed(run) + 1)
        return out
    return {k: data_mod.encode(splits[k], tokenizer, length, student_tokenizer=student_tokenizer)
            for k in ("train", "eval")}


def _subset(items, n: int, seed: int):
    if n >= len(items):
        return items
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    return [items[i] for i in sorted(order[:n])]


def label_count(run: RunConfig, splits: dict[str, Any]) -> int | None:
    """How many classes the run's data has (None for causal_lm); a DataError for a single class."""
    if run.task == "causal_lm":
        return None
    names = splits.get("label_names")
    n = len(names) if names else max(y for _, y in splits["train"]) + 1
    if n < 2:
        raise data_mod.DataError(f"the data {run.data!r} has a single class ({', '.join(map(str, names or [0]))}); "
                                 "classification needs at least two labels")
    return n


def align_label_names(run: RunConfig, source: str, splits: dict[str, Any], role: str = "teacher") -> dict[str, Any]:
    """``splits`` with label ids in the order of the ``id2label`` that a trained classifier
    ``source`` carries (``metakd.label_names.align_labels``; ``label_map`` maps other names);
    unchanged for models without a trained head or without saved names. A mismatch of names is
    a DataError before anything loads."""
    from .label_names import align_labels, saved_label_names
    from .models import model_config

    if run.task != "classification" or source.startswith("new:") or "label_names" not in splits:
        return splits
    config = model_config(source, role)
    if not any(str(a).endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or ()):
        return splits
    names = saved_label_names(config)
    if names is None:
        if run.label_map:
            raise ConfigError(f"label_map is set, but the {role} {source!r} has no label names to map to (only "
                              "LABEL_0, LABEL_1, ...)")
        return splits
    aligned, changed = align_labels(splits, names, source, role, run.label_map)
    if changed:
        _log(f"data labels numbered as the {role} {source!r} numbers them: "
             + ", ".join(f"{i}={n}" for i, n in enumerate(aligned["label_names"][:10])))
    return aligned
