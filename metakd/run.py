"""A whole run from one YAML file: load or fine-tune the teacher, build the student, read and
encode the data, distil, evaluate, save. ``metakd finetune-teacher`` and ``metakd distill`` are
thin wrappers around :func:`finetune_teacher` and :func:`distill`.

A run file holds the models, the data and the output directory at top level and the
``DistillConfig`` under ``distill:`` (see ``configs/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import data as data_mod
from .config import ConfigError, DistillConfig
from .messages import hub_progress_bars, log as _log
from .run_config import FINETUNE_KEYS, RunConfig, apply_overrides, yaml_problem
from .run_data import align_label_names, encode_splits, label_count, load_data
from .run_models import (NEW_ARCHS, base_teacher_source, build_student, check_num_labels, check_run, derived_student,
                         load_teacher, teacher_source)
from .run_teacher import evaluate_model_on, finetune_teacher, log_collapse_warning, stale_teacher_dir

# a run's parts have modules of their own: run_config (the run file), run_models (teacher source, student spec,
# checks, loading), run_data (reading, labels, tokenizing), run_teacher (fine-tuning the teacher, scoring); this
# module holds ``distill`` and names the others' functions (``from metakd.run import X`` as before)


def _train_time(m, d) -> dict[str, Any]:
    """The training measurement; after a resume ``seconds`` is the sum over the segments (to the
    checkpoint each resumed from, plus this one), ``segment_seconds`` this process's part; CPU
    time, energy and memory are this segment's."""
    out = m.to_dict()
    before = float(d.state.seconds_before or 0.0)
    if before:
        out["segment_seconds"] = out["seconds"]
        out["seconds"] = out["seconds"] + before
    return out


def _distill_plan(cfg: DistillConfig, train, eval_data=None) -> str:
    """Which limit ends the distillation (``distill.epochs`` or ``distill.max_steps``), in words,
    counting the rows ``fit`` trains on: what the quiz and validation splits leave."""
    from .finetune import step_plan

    student_part, quiz = data_mod.split_quiz(train, cfg.quiz_fraction, cfg.seed)
    held = f"the {cfg.quiz_fraction:g} quiz split"
    if cfg.validation_fraction > 0:  # carved as fit carves it
        student_part, _ = data_mod.split_validation(student_part, cfg.validation_fraction, cfg.seed,
                                                    [d for d in (quiz, eval_data) if d is not None])
        held = f"the {cfg.quiz_fraction:g} quiz and {cfg.validation_fraction:g} validation splits"
    _, plan = step_plan(len(student_part), cfg.batch_size, cfg.epochs, cfg.max_steps)
    plan = plan.replace("max_steps", "distill.max_steps").replace("raise epochs", "raise distill.epochs")
    return plan.replace(" batch(es)", f" batch(es) (after {held})", 1)


def _models(run: RunConfig, cfg: DistillConfig, splits: dict[str, Any], num_labels: int | None, dist,
            progress: bool):
    """``distill``'s models: the teacher (fine-tuned first where ``output/teacher`` is stale or its head
    untrained, by the main process) and the student, with the data's labels numbered as they number
    them; returns ``(splits, teacher, tokenizer, student, student_tokenizer)``."""
    stale = stale_teacher_dir(run, splits)
    if stale:
        if dist.is_main:
            finetune_teacher(run, progress=progress, why=stale, data_reported=True)
        dist.barrier()
    if run.task == "classification":  # the quiz split, checked before any model loads (LM blocks: after encoding)
        data_mod.split_quiz(splits["train"], cfg.quiz_fraction, cfg.seed)
    if not derived_student(run.student):
        check_num_labels(run, run.student, num_labels, "student")
    splits = align_label_names(run, teacher_source(run), splits)
    if not derived_student(run.student):
        student_aligned = align_label_names(run, run.student, splits, "student")
        if student_aligned["label_names"] != splits["label_names"]:
            raise data_mod.DataError(f"the student {run.student!r} numbers the labels {student_aligned['label_names']} "
                                     f"but the teacher {splits['label_names']}; use models that agree")
    teacher, tokenizer = load_teacher(run, num_labels)
    if getattr(teacher, "metakd_new_head", False):
        if dist.is_main:  # one process fine-tunes and saves; the others load what it saved
            finetune_teacher(run, progress=progress, why="the teacher's classification head is untrained",
                             data_reported=True)
        dist.barrier()
        teacher, tokenizer = load_teacher(run, num_labels)
    student, student_tokenizer = build_student(run, teacher, tokenizer, num_labels)
    return splits, teacher, tokenizer, student, student_tokenizer


def _check_before_loading(run: RunConfig, cfg: DistillConfig, dist: Any, resume: bool, resume_if_present: bool,
                          overwrite: bool) -> bool:
    """What ``distill`` checks before any model or data loads; returns whether it resumes."""
    from .outputs import resume_decision
    from .step_log import check_report_to

    check_run(run)
    check_report_to(cfg.report_to)  # a missing tensorboard fails before anything loads
    resume = resume_decision(run.output, resume, resume_if_present, overwrite)
    dist.barrier()  # every process decided before the main one writes anything there
    if run.teacher.startswith("new:") and not (run.teacher_dir / "config.json").is_file():
        raise ConfigError(f"teacher {run.teacher!r} is trained from scratch: run `metakd finetune-teacher` first "
                          f"(it saves to {run.teacher_dir})")
    return resume


def _result(run: RunConfig, d: Any, history: dict[str, Any], measured: Any, teacher_before: dict[str, float],
            eval_data: Any, splits: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` of a distillation run, less its history (and the teacher's warning)."""
    from .evaluate import generation_speed

    cfg = d.config
    result: dict[str, Any] = {
        "run": run.to_dict(), "student": history["eval"][-1], "teacher_before": teacher_before,
        # plain KD leaves the teacher as it was: no second evaluation
        "teacher_after": (teacher_before if cfg.meta_update == "none" else d.evaluate(eval_data, model="teacher")),
        "train": _train_time(measured, d),
        "steps": len(history["train"]), "trainable_teacher_params": d.trainable_teacher_parameters(),
        # validation_fraction > 0: the best-validation point (its step, validation and eval scores) beside the last
        "best_validation": history.get("best"),
        "student_params": sum(p.numel() for p in d.student.parameters()),
        "trainable_student_params": sum(p.numel() for p in d.student_params),
    }
    if history.get("teacher_guard"):
        result["teacher_guard"] = history["teacher_guard"]
    if cfg.meta_update != "none" and run.task == "classification":
        before, after = result["teacher_before"]["accuracy"], result["teacher_after"]["accuracy"]
        if after < before:  # never hand back a worse teacher without saying so
            _log(f"the meta-updated teacher ends at {100 * after:.2f}% on the evaluation data, "
                 f"{100 * (before - after):.2f} points below the {100 * before:.2f}% it started at")
    if run.task == "causal_lm":
        prompts = torch.stack([eval_data[i]["input_ids"][:8] for i in range(min(4, len(eval_data)))])
        result["student_generation"] = generation_speed(d.student, prompts, run.generation_tokens)
        result["teacher_generation"] = generation_speed(d.teacher, prompts, run.generation_tokens)
    if "label_names" in splits:
        result["label_names"] = splits["label_names"]
    return result


def distill(run: RunConfig, progress: bool = True, resume: bool = False, *, resume_if_present: bool = False,
            overwrite: bool = False) -> dict[str, Any]:
    """Distil as configured: returns (and writes to ``output/metrics.json``) the student's and the
    teacher's scores, time, memory and energy; the result is saved in ``output/distilled``.
    Checkpoints go to ``output/checkpoint`` (every ``distill.checkpoint_every`` steps, at the end
    and on SIGTERM/SIGINT); ``resume`` continues from the one there and is refused when there is
    none, unless ``resume_if_present`` (which resumes only when there is one). A fresh run into an
    output directory that holds a previous run (``metrics.json``, ``distilled/``, checkpoints) is
    refused unless ``overwrite``.

    Launched on several processes (``accelerate launch``/``torchrun``) the training is
    data-parallel (``metakd.distributed``); every process trains and evaluates, only the main one
    shows progress and writes files, and the others wait for it."""
    from .distributed import Dist

    dist = Dist.from_env()  # before any model loads: it picks this process's GPU
    progress = progress and dist.is_main
    cfg = run.distill.replace(progress=progress and run.distill.progress)
    resume = _check_before_loading(run, cfg, dist, resume, resume_if_present, overwrite)
    with hub_progress_bars(progress):  # no "Loading weights" / "Writing model shards" bars where metakd shows none
        return _load_train_save(run, cfg, dist, progress, resume)


def _load_train_save(run: RunConfig, cfg: DistillConfig, dist: Any, progress: bool, resume: bool) -> dict[str, Any]:
    """``distill`` once its checks passed: load, train, evaluate, save."""
    from .distiller import MetaDistiller
    from .label_names import set_label_names
    from .telemetry import EnergyMeter, measure

    splits = load_data(run)
    num_labels = label_count(run, splits)
    splits, teacher, tokenizer, student, student_tokenizer = _models(run, cfg, splits, num_labels, dist,
                                                                     progress)
    encoded = encode_splits(run, splits, tokenizer, student_tokenizer)
    _log(f"{len(encoded['train'])} training and {len(encoded['eval'])} evaluation "
         f"{'blocks' if run.task == 'causal_lm' else 'examples'}; meta_update={cfg.meta_update}; "
         + _distill_plan(cfg, encoded["train"], encoded["eval"]))
    d = MetaDistiller(teacher, student, cfg, dist=dist, keep_teacher_adapters=True)  # a run file names its teacher
    teacher_before = d.evaluate(encoded["eval"], model="teacher")
    teacher_warning = log_collapse_warning(run, teacher_before, encoded["eval"])
    d.state.start_clock()  # checkpoints record the training seconds, so a resumed run reports the sum
    with measure(energy=EnergyMeter()) as m:
        history = d.fit(encoded["train"], eval_data=encoded["eval"], checkpoint_dir=Path(run.output) / "checkpoint",
                        resume=resume, log_dir=run.output)
    result = _result(run, d, history, m, teacher_before, encoded["eval"], splits)
    if teacher_warning:
        result["teacher_warning"] = teacher_warning
    result["saved"] = str(Path(run.output) / "distilled")
    if "label_names" in splits:  # config.json of every saved model names its labels
        set_label_names(d.student, splits["label_names"])
        set_label_names(d.teacher, splits["label_names"])
    if dist.is_main:  # every process holds the same models: one writes them
        d.save(result["saved"], tokenizer=tokenizer, student_tokenizer=student_tokenizer)
        (Path(run.output) / "metrics.json").write_text(json.dumps({**result, "history": history}, indent=2,
                                                                  default=str))
    dist.barrier()
    return result


__all__ = ["FINETUNE_KEYS", "NEW_ARCHS", "RunConfig", "align_label_names", "apply_overrides", "base_teacher_source",
           "build_student", "check_num_labels", "check_run", "derived_student", "distill", "encode_splits",
           "evaluate_model_on", "finetune_teacher", "label_count", "load_data", "load_teacher", "log_collapse_warning",
           "stale_teacher_dir", "teacher_source", "yaml_problem"]
