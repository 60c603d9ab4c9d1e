"""Learning-rate schedules of the student and teacher optimizers (``student_lr_schedule``,
``teacher_lr_schedule``, ``warmup_steps``/``warmup_ratio``), built with
``transformers.get_scheduler``. The student's counts the run's training steps; the teacher's counts
its own steps, the meta-steps the run takes (every ``meta_every``-th training step from ``meta_start``),
and its warm-up counts teacher steps too."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

log = logging.getLogger("metakd.distiller")

SCHEDULER_NAMES = {"constant": "constant", "linear": "linear", "cosine": "cosine"}
"""Config name -> ``transformers.get_scheduler`` name (``constant`` with warm-up is
``constant_with_warmup``)."""


def warmup_for(config: Any, total_steps: int) -> int:
    """Warm-up steps of a run of ``total_steps``: ``warmup_steps``, else ``round(warmup_ratio * total)``, else 0."""
    if config.warmup_steps is not None:
        return int(config.warmup_steps)
    if config.warmup_ratio is not None:
        return int(round(config.warmup_ratio * total_steps))
    return 0


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int,
                   warmup_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """A scheduler that multiplies ``optimizer``'s learning rate by the ``name`` schedule
    ("constant", "linear", "cosine") over ``total_steps`` steps after ``warmup_steps`` of linear
    warm-up from 0; step it once after every step of the optimizer it schedules (``step_schedulers``)."""
    from transformers import get_scheduler

    if name not in SCHEDULER_NAMES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; use one of {', '.join(SCHEDULER_NAMES)}")
    hf_name = "constant_with_warmup" if name == "constant" and warmup_steps else SCHEDULER_NAMES[name]
    return get_scheduler(hf_name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max(1, total_steps))


def meta_steps_between(config: Any, start: int, stop: int, meta_start: int | None) -> int:
    """How many of the training steps ``start .. stop-1`` are meta-steps: a multiple of ``meta_every``
    and not before ``meta_start`` (the step ``fit`` resolved; None: 0)."""
    every = int(config.meta_every)
    first = max(int(start), int(meta_start or 0))
    first = -(-first // every) * every  # the first multiple of meta_every from there
    return max(0, (int(stop) - 1 - first) // every + 1) if first < stop else 0


def _teacher_scheduler(distiller: Any, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    cfg = distiller.config
    return make_scheduler(cfg.teacher_lr_schedule, distiller.teacher_optimizer, steps, warmup_for(cfg, steps))


def attach_schedulers(distiller: Any, total_steps: int) -> None:
    """Give ``distiller`` its ``student_scheduler`` over the ``total_steps`` training steps of this
    ``fit`` and its ``teacher_scheduler`` (None without a teacher optimizer) over the meta-steps among
    them (``teacher_schedule_steps``; ``meta_start_step`` resolved by ``fit``), and remember the run's
    length (``schedule_steps``) so a resume can check it is unchanged."""
    cfg = distiller.config
    distiller.schedule_steps = int(total_steps)
    distiller.student_scheduler = make_scheduler(cfg.student_lr_schedule, distiller.student_optimizer, total_steps,
                                                 warmup_for(cfg, total_steps))
    distiller.teacher_scheduler = None
    if distiller.teacher_optimizer is not None:
        start = int(distiller.steps_done)
        distiller.teacher_schedule_steps = meta_steps_between(cfg, start, start + int(total_steps),
                                                              getattr(distiller, "meta_start_step", 0))
        distiller.teacher_scheduler = _teacher_scheduler(distiller, distiller.teacher_schedule_steps)


def _step(scheduler: Any) -> None:
    if scheduler is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            scheduler.step()


def step_schedulers(distiller: Any, meta: bool) -> None:
    """Advance the schedules after a training step (after the optimizers stepped): the student's
    always, the teacher's after a meta-step (``meta``: the step's ``metrics["meta"]``). A step the
    numerical guards or the fp16 scaler skipped (no ``optimizer.step()``) still counts: the schedules
    follow the steps taken, so torch's warning about that order is silenced."""
    _step(getattr(distiller, "student_scheduler", None))
    if meta:
        _step(getattr(distiller, "teacher_scheduler", None))


def scheduler_state(distiller: Any) -> dict[str, Any] | None:
    """The schedules' state (JSON-serialisable) for a checkpoint; None when there are none."""
    if getattr(distiller, "student_scheduler", None) is None:
        return None
    teacher = getattr(distiller, "teacher_scheduler", None)
    return {"total_steps": distiller.schedule_steps, "student": distiller.student_scheduler.state_dict(),
            "teacher": teacher.state_dict() if teacher is not None else None,
            "teacher_steps": distiller.teacher_schedule_steps if teacher is not None else None}


def load_teacher_schedule(distiller: Any, saved: dict[str, Any], fit_start_step: int) -> None:
    """Restore the teacher schedule's position from a checkpoint's ``scheduler_state``. Its length
    is the checkpointed run's (``fit`` sized it before it knew where the resumed fit started; the
    optimizer keeps the learning rate it saved). A checkpoint from before teacher-step schedules
    counted training steps: its position becomes the meta-steps taken, with a warning."""
    optimizer = distiller.teacher_optimizer
    lrs = [group["lr"] for group in optimizer.param_groups]  # as the checkpoint's optimizer saved them
    state = dict(saved["teacher"])
    steps = saved.get("teacher_steps")
    if steps is None:
        done = meta_steps_between(distiller.config, fit_start_step, fit_start_step + int(state["last_epoch"]),
                                  getattr(distiller, "meta_start_step", 0))
        steps = distiller.teacher_schedule_steps
        state.update(last_epoch=done, _step_count=done + 1)
        log.warning("the checkpoint's teacher learning-rate schedule counted training steps: continuing it at "
                    "teacher step %d of %d", done, steps)
    if int(steps) != distiller.teacher_schedule_steps:
        distiller.teacher_schedule_steps = int(steps)
        distiller.teacher_scheduler = _teacher_scheduler(distiller, int(steps))
    scheduler = distiller.teacher_scheduler
    scheduler.load_state_dict(state)
    if saved.get("teacher_steps") is None:
        lrs = [base * rate(scheduler.last_epoch) for rate, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
        scheduler._last_lr = list(lrs)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr


def current_lrs(distiller: Any) -> dict[str, float]:
    """The learning rates the next step will use: ``student_lr`` and, with a teacher optimizer, ``teacher_lr``."""
    out = {"student_lr": float(distiller.student_optimizer.param_groups[0]["lr"])}
    if distiller.teacher_optimizer is not None:
        out["teacher_lr"] = float(distiller.teacher_optimizer.param_groups[0]["lr"])
    return out


__all__ = ["attach_schedulers", "current_lrs", "load_teacher_schedule", "make_scheduler", "meta_steps_between",
           "scheduler_state", "step_schedulers", "warmup_for"]
