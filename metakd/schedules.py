"""Learning-rate schedules of the student and teacher optimizers (``student_lr_schedule``,
``teacher_lr_schedule``, ``warmup_steps``/``warmup_ratio``), built with
``transformers.get_scheduler`` and held by the distiller's ``TrainingState``
(``metakd.training_state``). The student's counts the run's training steps; the teacher's counts
its own steps, the meta-steps the run takes (every ``meta_every``-th training step from ``meta_start``),
and its warm-up counts teacher steps too."""

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


def quiet_step(scheduler: Any) -> None:
    """Step ``scheduler`` (None: nothing), silencing torch's warning about a step the optimizer skipped
    (a step the numerical guards or the fp16 scaler skipped still counts: the schedules follow the steps taken)."""
    if scheduler is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            scheduler.step()


__all__ = ["make_scheduler", "meta_steps_between", "quiet_step", "warmup_for"]
