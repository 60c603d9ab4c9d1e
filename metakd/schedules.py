"""Learning-rate schedules of the student and teacher optimizers (``student_lr_schedule``,
``teacher_lr_schedule``, ``warmup_steps``/``warmup_ratio``), built with
``transformers.get_scheduler`` over a run's training steps."""

from __future__ import annotations

import warnings

from typing import Any

import torch

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
    warm-up from 0; step it once after every training step."""
    from transformers import get_scheduler

    if name not in SCHEDULER_NAMES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; use one of {', '.join(SCHEDULER_NAMES)}")
    hf_name = "constant_with_warmup" if name == "constant" and warmup_steps else SCHEDULER_NAMES[name]
    return get_scheduler(hf_name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max(1, total_steps))


def attach_schedulers(distiller: Any, total_steps: int) -> None:
    """Give ``distiller`` its ``student_scheduler`` and ``teacher_scheduler`` (None without a
    teacher optimizer) for a run of ``total_steps`` training steps, and remember the length
    (``schedule_steps``) so a resume can check it is unchanged."""
    cfg = distiller.config
    warmup = warmup_for(cfg, total_steps)
    distiller.schedule_steps = int(total_steps)
    distiller.student_scheduler = make_scheduler(cfg.student_lr_schedule, distiller.student_optimizer, total_steps,
                                                 warmup)
    distiller.teacher_scheduler = (make_scheduler(cfg.teacher_lr_schedule, distiller.teacher_optimizer, total_steps,
                                                  warmup) if distiller.teacher_optimizer is not None else None)


def step_schedulers(distiller: Any) -> None:
    """Advance both schedules by one training step (after the optimizers stepped). A step the
    numerical guards or the fp16 scaler skipped (no ``optimizer.step()``) still counts: the
    schedule follows training steps, so torch's warning about that order is silenced."""
    for name in ("student_scheduler", "teacher_scheduler"):
        scheduler = getattr(distiller, name, None)
        if scheduler is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                scheduler.step()


def scheduler_state(distiller: Any) -> dict[str, Any] | None:
    """The schedules' state (JSON-serialisable) for a checkpoint; None when there are none."""
    if getattr(distiller, "student_scheduler", None) is None:
        return None
    teacher = getattr(distiller, "teacher_scheduler", None)
    return {"total_steps": distiller.schedule_steps, "student": distiller.student_scheduler.state_dict(),
            "teacher": teacher.state_dict() if teacher is not None else None}


def current_lrs(distiller: Any) -> dict[str, float]:
    """The learning rates the next step will use: ``student_lr`` and, with a teacher optimizer, ``teacher_lr``."""
    out = {"student_lr": float(distiller.student_optimizer.param_groups[0]["lr"])}
    if distiller.teacher_optimizer is not None:
        out["teacher_lr"] = float(distiller.teacher_optimizer.param_groups[0]["lr"])
    return out


__all__ = ["attach_schedulers", "current_lrs", "make_scheduler", "scheduler_state", "step_schedulers", "warmup_for"]
