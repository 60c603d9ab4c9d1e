"""The task teacher of a run: fine-tuned (or trained from scratch) and saved in ``output/teacher``
(``finetune_teacher``), refused there when it was made for other data or settings
(``stale_teacher_dir``); how a run scores a model (``evaluate_model_on``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from . import data as data_mod
from .atomic import atomic_directory
from .config import ConfigError
from .messages import hub_progress_bars, log as _log
from .run_config import RunConfig
from .run_data import align_label_names, encode_splits, label_count, teacher_training_split
from .run_models import base_teacher_source, check_run, load_teacher


def _teacher_to_train(run: RunConfig, splits: dict[str, Any], num_labels: int | None) -> tuple[Any, Any]:
    """The model and tokenizer ``finetune_teacher`` trains: a new causal LM with a BPE tokenizer
    trained on the training split (``new:ARCH``), or the base teacher loaded."""
    if run.teacher.startswith("new:"):
        from .scratch import new_causal_lm, train_bpe_tokenizer

        sizes = dict(run.teacher_config)
        vocab = int(sizes.pop("tokenizer_vocab", 4096))
        _log(f"training a {vocab}-entry BPE tokenizer on {len(splits['train'])} documents")
        tokenizer = train_bpe_tokenizer(splits["train"], vocab)
        return new_causal_lm(run.teacher.partition(":")[2], tokenizer, seed=run.distill.seed, **sizes), tokenizer
    return load_teacher(run, num_labels, source=base_teacher_source(run))


def _save_teacher(model: Any, tokenizer: Any, target: Path, report: dict[str, Any],
                  label_names: list[str] | None) -> None:
    """The fine-tuned teacher, its tokenizer and its record in ``target``, all or nothing."""
    from .label_names import set_label_names
    from .teacher_cache import RECORD

    if label_names is not None:
        set_label_names(model, label_names)
    with atomic_directory(target) as tmp:  # a kill mid-save never leaves a half-written teacher to pick up
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / RECORD).write_text(json.dumps(report, indent=2, default=str))


def finetune_teacher(run: RunConfig, progress: bool = True, *, why: str | None = None,
                     data_reported: bool = False) -> dict[str, Any]:
    """Fine-tune (or, for ``new:ARCH``, train from scratch) the teacher on the task's training
    split and save it with ``save_pretrained`` (safetensors) plus its tokenizer in
    ``output/teacher``, where ``distill`` picks it up. Returns the teacher's eval scores.

    The result is recorded with its origin (``metakd.teacher_cache``) and cached under
    ``$METAKD_CACHE/finetuned``: a later run with the same base teacher, data, label names, seed
    and fine-tuning settings copies it instead of fine-tuning again, whatever its output
    directory. Fine-tuning checkpoints to ``output/teacher_checkpoint`` (every
    ``distill.checkpoint_every`` steps and on SIGTERM/SIGINT, then ``TrainingInterrupted``), and
    a rerun continues from there.

    ``why``: why the caller (``distill``) fine-tunes, said together with what happens (the
    fine-tuning, or the reuse of a cached teacher). ``data_reported``: the caller has read the data
    and said so; it is read again quietly."""
    with hub_progress_bars(progress):  # no "Loading weights" / "Writing model shards" bars where metakd shows none
        return _reuse_or_fine_tune(run, progress, why, data_reported)


def _reuse_or_fine_tune(run: RunConfig, progress: bool, why: str | None, data_reported: bool) -> dict[str, Any]:
    """``finetune_teacher``'s work: the cached teacher copied, or the teacher fine-tuned, saved and cached."""
    import shutil

    from .finetune import REPORT_SECONDS, cache_key, finetune_classifier, step_plan
    from .teacher_cache import RECORD, cached_teacher, copy_teacher, store_teacher, teacher_origin
    from .telemetry import measure

    ft = run.finetune
    pool_run = run  # the distillation's own n_train (finetune.disjoint keeps the teacher off its subset)
    if ft["n_train"] is not None:  # the teacher may see more (or fewer) training examples than the student
        run = dataclasses.replace(run, n_train=int(ft["n_train"]))
    if run.teacher_bits:
        raise ConfigError("fine-tune the teacher unquantized (drop teacher_bits for finetune-teacher); "
                          "distill then loads the saved teacher quantized")
    check_run(run, teacher=base_teacher_source(run), student=False)
    splits = align_label_names(run, base_teacher_source(run),
                               teacher_training_split(pool_run, report=not data_reported))
    num_labels = label_count(run, splits)
    origin = teacher_origin(pool_run, base_teacher_source(run), splits.get("label_names"))
    cached = cached_teacher(origin)
    if cached is not None:
        copy_teacher(cached, run.teacher_dir)
        _log((f"{why}; " if why else "") + f"reusing the fine-tuned teacher cached in {cached} (same base teacher, "
             f"data, label names, seed and fine-tuning settings); copied to {run.teacher_dir}")
        report = json.loads((cached / RECORD).read_text())
        return {**report, "saved": str(run.teacher_dir), "cached": str(cached)}
    if why:
        _log(f"{why}: fine-tuning it first (as `metakd finetune-teacher` does; saved to {run.teacher_dir} and "
             "reused)")
    model, tokenizer = _teacher_to_train(run, splits, num_labels)
    encoded = encode_splits(run, splits, tokenizer)
    train = encoded["train"]
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    _, plan = step_plan(len(train), int(ft["batch_size"]), int(ft["epochs"]), ft["max_steps"])
    what = "blocks" if run.task == "causal_lm" else "examples"
    _log(f"fine-tuning the teacher on {len(train)} {what}, lr {ft['lr']}: "
         f"{plan.replace('max_steps', 'finetune.max_steps').replace('raise epochs', 'raise finetune.epochs')}")
    checkpoints = Path(run.output) / "teacher_checkpoint"
    with measure() as m:
        finetune_classifier(model, train, epochs=int(ft["epochs"]), lr=float(ft["lr"]), batch_size=int(ft["batch_size"]),
                            seed=run.distill.seed, pad_id=pad, progress=progress, task=run.task,
                            max_steps=ft["max_steps"], checkpoint_dir=checkpoints,
                            checkpoint_every=run.distill.checkpoint_every, settings={"origin": cache_key(**origin)},
                            log=_log, log_dir=run.output, report_every=None if progress else REPORT_SECONDS)
    scores = evaluate_model_on(run, model, encoded["eval"], pad)
    target = run.teacher_dir
    report = {"teacher": run.teacher, "saved": str(target), "eval": scores, "train": m.to_dict(),
              "n_train": len(train), "origin": origin}
    warning = log_collapse_warning(run, scores, encoded["eval"])
    if warning:
        report["warning"] = warning
    _save_teacher(model, tokenizer, target, report, splits.get("label_names"))
    shutil.rmtree(checkpoints, ignore_errors=True)
    _log(f"fine-tuned teacher saved to {target} and cached in {store_teacher(target, origin)}")
    return report


def stale_teacher_dir(run: RunConfig, splits: dict[str, Any]) -> str | None:
    """Why ``output/teacher`` must be fine-tuned again (None: it need not): it was fine-tuned from
    another base teacher, data, label names, seed or fine-tuning settings than this run's. Says
    when it uses the one there."""
    from .teacher_cache import origin_difference, recorded_origin, teacher_origin

    target = run.teacher_dir
    if not (target / "config.json").is_file() or Path(base_teacher_source(run)).resolve() == target.resolve():
        return None
    recorded = recorded_origin(target)
    if recorded is None:  # saved by hand or by an older metakd: nothing to compare, used as it is
        return None
    base = base_teacher_source(run)
    current = teacher_origin(run, base, align_label_names(run, base, splits).get("label_names"))
    differ = origin_difference(recorded, current)
    if not differ:
        _log(f"using the fine-tuned teacher in {target} (same base teacher, data, labels, seed and settings)")
        return None
    return f"the teacher in {target} was fine-tuned with other {', '.join(differ)} than this run"


def log_collapse_warning(run: RunConfig, scores: dict[str, float], eval_data, role: str = "teacher") -> str | None:
    """Log (and return) a warning when a classifier learned little beyond the class prior
    (``metakd.evaluate.collapse_warning``: the majority-class rate, and an MCC floor)."""
    from .evaluate import collapse_warning

    if run.task != "classification":
        return None
    warning = collapse_warning(scores, data_mod.labels_of(eval_data), role)
    if warning:
        _log(f"warning: {warning}")
    return warning


def evaluate_model_on(run: RunConfig, model, data, pad: int | dict[str, int], side: str = "teacher") -> dict[str, float]:
    """Scores of ``model`` on encoded ``data`` as the run's task measures them
    (``metakd.evaluate.evaluate_model`` with the run's task, batch size and chunking)."""
    from .evaluate import evaluate_model

    return evaluate_model(model, data, task=run.task, batch_size=run.distill.eval_batch_size, pad=pad, side=side,
                          lm_chunk_size=run.distill.lm_chunk_size)
