"""The training state of a MetaDistiller: everything a run's progress consists of besides the
models' weights (the step count, the optimizers and their learning-rate schedules, the fp16 loss
scaler, the data-shuffling generators, the clock, the numerical guards' counters, where the
current ``fit`` started). The distiller owns one ``TrainingState``; the meta-step and the training
loop read and advance it, and checkpoints save and restore it whole (``checkpoint_entries`` /
``load_checkpoint_entries``) in the checkpoint format of ``metakd.checkpoint``, so checkpoints
written before this object existed load unchanged."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from .checkpoint import CheckpointError, load_optimizer, optimizer_tensors
from .precision import make_scaler
from .rng import shuffle_generators
from .schedules import make_scheduler, meta_steps_between, quiet_step, warmup_for

log = logging.getLogger("metakd.distiller")


class TrainingState:
    """Steps, optimizers, schedules, scaler, generators and clock of one distiller (see the module)."""

    def __init__(self, config: Any, student_optimizer: torch.optim.Optimizer,
                 teacher_optimizer: torch.optim.Optimizer | None, device: torch.device):
        self.config = config
        self.student_optimizer = student_optimizer
        self.teacher_optimizer = teacher_optimizer
        """None in plain KD (no teacher parameter learns)."""
        self.steps_done = 0
        """Training steps taken by every ``fit`` and ``step`` so far."""
        self.meta_start_step: int | None = config.meta_start if isinstance(config.meta_start, int) else None
        """The first step at which the teacher learns (a share of the run: resolved by ``fit``)."""
        self.student_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.teacher_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.schedule_steps: int | None = None
        """The training steps the current schedules span (a resume checks it is unchanged)."""
        self.teacher_schedule_steps: int | None = None
        """The meta-steps among them: the teacher schedule's length."""
        self.scaler = make_scaler(device, config.precision)
        """The fp16 ``GradScaler`` (disabled, a pass-through, for fp32 and bf16)."""
        self.shuffle: dict[str, torch.Generator] | None = None
        """The generators that shuffle the training and quiz data (``metakd.rng``), made by the first ``fit``."""
        self.fit_start: dict[str, Any] | None = None
        """Where the current ``fit`` started: its step and the shuffle generators' states then."""
        self.skipped_steps = 0
        """Steps skipped in all for a NaN/inf loss or gradient."""
        self.bad_in_a_row = 0
        """Skipped steps in a row up to the last step (a good step resets it)."""
        self.clock: float | None = None
        """``time.perf_counter()`` when training started (None: not timed)."""
        self.seconds_before = 0.0
        """Training seconds of the segments before a resume."""

    # ------------------------------------------------------------------ data order
    def shuffle_generators(self) -> dict[str, torch.Generator]:
        """The shuffle generators, made from the config's seed the first time and continued after."""
        if self.shuffle is None:
            self.shuffle = shuffle_generators(self.config.seed)
        return self.shuffle

    def begin_fit(self) -> None:
        """Record where a ``fit`` starts, so a checkpoint lets a resume replay the same batches."""
        self.fit_start = {"step": self.steps_done, **{k: g.get_state() for k, g in self.shuffle_generators().items()}}

    def current_fit_start(self) -> dict[str, Any]:
        """Where the current ``fit`` started (stepped without ``fit``: now, with the generators a
        ``fit`` would start from)."""
        if self.fit_start is not None:
            return self.fit_start
        shuffle = self.shuffle or shuffle_generators(self.config.seed)
        return {"step": self.steps_done, **{k: g.get_state() for k, g in shuffle.items()}}

    def resolve_meta_start(self, total: int) -> None:
        """``meta_start`` given as a share: the step of this ``fit`` (``total`` steps) it names."""
        if not isinstance(self.config.meta_start, int):
            self.meta_start_step = self.current_fit_start()["step"] + int(round(self.config.meta_start * total))

    # ------------------------------------------------------------------ learning-rate schedules
    def start_schedules(self, total_steps: int) -> None:
        """The student's schedule over this ``fit``'s ``total_steps`` training steps and the teacher's
        (without a teacher optimizer: none) over the meta-steps among them."""
        cfg = self.config
        self.schedule_steps = int(total_steps)
        self.student_scheduler = make_scheduler(cfg.student_lr_schedule, self.student_optimizer, total_steps,
                                                warmup_for(cfg, total_steps))
        self.teacher_scheduler = None
        if self.teacher_optimizer is not None:
            start = int(self.steps_done)
            self.teacher_schedule_steps = meta_steps_between(cfg, start, start + int(total_steps),
                                                             self.meta_start_step)
            self.teacher_scheduler = self._teacher_scheduler(self.teacher_schedule_steps)

    def _teacher_scheduler(self, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        cfg = self.config
        return make_scheduler(cfg.teacher_lr_schedule, self.teacher_optimizer, steps, warmup_for(cfg, steps))

    def advance_schedules(self, meta: bool) -> None:
        """After a training step: the student's schedule always, the teacher's after a meta-step. A
        step the numerical guards or the fp16 scaler skipped still counts."""
        quiet_step(self.student_scheduler)
        if meta:
            quiet_step(self.teacher_scheduler)

    def learning_rates(self) -> dict[str, float]:
        """The learning rates the next step uses: ``student_lr`` and, with a teacher optimizer, ``teacher_lr``."""
        out = {"student_lr": float(self.student_optimizer.param_groups[0]["lr"])}
        if self.teacher_optimizer is not None:
            out["teacher_lr"] = float(self.teacher_optimizer.param_groups[0]["lr"])
        return out

    def _schedule_entries(self) -> dict[str, Any] | None:
        if self.student_scheduler is None:
            return None
        teacher = self.teacher_scheduler
        return {"total_steps": self.schedule_steps, "student": self.student_scheduler.state_dict(),
                "teacher": teacher.state_dict() if teacher is not None else None,
                "teacher_steps": self.teacher_schedule_steps if teacher is not None else None}

    def _load_schedules(self, saved: dict[str, Any] | None, where: Any, fit_start_step: int) -> None:
        """Restore the schedules' position; refuse a resume that changes a schedule's length
        (``max_steps``/``epochs`` may change only while both schedules are flat)."""
        if self.student_scheduler is None or saved is None:
            return
        cfg = self.config
        flat = (cfg.student_lr_schedule == cfg.teacher_lr_schedule == "constant") and cfg.warmup_ratio is None
        if not flat and int(saved["total_steps"]) != int(self.schedule_steps):
            raise CheckpointError(f"the checkpoint in {where} follows learning-rate schedules over "
                                  f"{saved['total_steps']} steps but this run has {self.schedule_steps}; resume with "
                                  "the same max_steps/epochs (a schedule's shape depends on the run's length)")
        self.student_scheduler.load_state_dict(saved["student"])
        if self.teacher_scheduler is not None and saved.get("teacher") is not None:
            self._load_teacher_schedule(saved, fit_start_step)

    def _load_teacher_schedule(self, saved: dict[str, Any], fit_start_step: int) -> None:
        """The teacher schedule's position. Its length is the checkpointed run's (the optimizer keeps
        the learning rate it saved). A checkpoint from before teacher-step schedules counted training
        steps: its position becomes the meta-steps taken, with a warning."""
        optimizer = self.teacher_optimizer
        lrs = [group["lr"] for group in optimizer.param_groups]  # as the checkpoint's optimizer saved them
        state = dict(saved["teacher"])
        steps = saved.get("teacher_steps")
        if steps is None:
            done = meta_steps_between(self.config, fit_start_step, fit_start_step + int(state["last_epoch"]),
                                      self.meta_start_step)
            steps = self.teacher_schedule_steps
            state.update(last_epoch=done, _step_count=done + 1)
            log.warning("the checkpoint's teacher learning-rate schedule counted training steps: continuing it at "
                        "teacher step %d of %d", done, steps)
        if int(steps) != self.teacher_schedule_steps:
            self.teacher_schedule_steps = int(steps)
            self.teacher_scheduler = self._teacher_scheduler(int(steps))
        scheduler = self.teacher_scheduler
        scheduler.load_state_dict(state)
        if saved.get("teacher_steps") is None:
            lrs = [base * rate(scheduler.last_epoch) for rate, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
            scheduler._last_lr = list(lrs)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr

    # ------------------------------------------------------------------ the clock
    def start_clock(self) -> None:
        """Time the training from now: checkpoints record the seconds so far (``train_seconds``), and a
        resumed run adds those of the segments before it."""
        self.clock, self.seconds_before = time.perf_counter(), 0.0

    def train_seconds(self) -> float | None:
        """Wall seconds of training over every segment of a resumed run so far (None: no clock)."""
        return None if self.clock is None else self.seconds_before + time.perf_counter() - self.clock

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_entries(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The whole state as a checkpoint holds it: JSON entries and tensors."""
        opt_s, meta_s = optimizer_tensors("optim_student", self.student_optimizer)
        opt_t, meta_t = optimizer_tensors("optim_teacher", self.teacher_optimizer)
        start = self.current_fit_start()
        tensors = {**opt_s, **opt_t, **{f"rng.{k}_shuffle": v for k, v in start.items() if k != "step"}}
        meta = {"steps_done": self.steps_done, "fit_start_step": start["step"],
                "optimizers": {"student": meta_s, "teacher": meta_t},
                "counters": {"skipped_steps": self.skipped_steps, "bad_in_a_row": self.bad_in_a_row},
                "schedulers": self._schedule_entries(), "train_seconds": self.train_seconds()}
        if self.scaler.is_enabled():  # fp16: the loss scale and its growth tracker
            meta["scaler"] = {k: float(v) if isinstance(v, torch.Tensor) else v
                              for k, v in self.scaler.state_dict().items()}
        return meta, tensors

    def load_checkpoint_entries(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: Any) -> dict:
        """Restore the state from a checkpoint's entries; returns where its ``fit`` started (step and
        shuffle generator states) for the caller to replay the data."""
        load_optimizer("optim_student", self.student_optimizer, meta["optimizers"]["student"], tensors)
        load_optimizer("optim_teacher", self.teacher_optimizer, meta["optimizers"]["teacher"], tensors)
        self._load_schedules(meta.get("schedulers"), where, int(meta.get("fit_start_step", 0)))
        if meta.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(meta["scaler"])
        self.steps_done = int(meta["steps_done"])
        if meta.get("train_seconds") is not None and self.clock is not None:
            self.seconds_before = float(meta["train_seconds"])
        counters = meta.get("counters", {})
        self.skipped_steps = int(counters.get("skipped_steps", 0))
        self.bad_in_a_row = int(counters.get("bad_in_a_row", 0))
        if "rng.train_shuffle" in tensors:
            self.fit_start = {"step": int(meta.get("fit_start_step", 0)), "train": tensors["rng.train_shuffle"],
                              "quiz": tensors["rng.quiz_shuffle"]}
        else:  # version 1: a first fit, whose loaders were seeded by the config
            self.fit_start = {"step": 0, **{k: g.get_state() for k, g in shuffle_generators(self.config.seed).items()}}
        return self.fit_start


__all__ = ["TrainingState"]
