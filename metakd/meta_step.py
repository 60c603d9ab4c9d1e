"""One training step of a MetaDistiller: a plain KD step, or a meta-step (teacher forward →
pilot → quiz → meta-gradient → teacher step → student step), with every NaN/inf loss or gradient
skipped, counted and, after ``max_bad_steps`` in a row, stopped (``metakd.numerical_guards``)."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any, ContextManager, Mapping

import torch
from torch import nn

from .distributed import Dist
from .forward import Outputs, checkpointed_blocks, model_inputs, run, to_device
from .metagrad import MetaProblem, MetaResult, meta_gradient
from .metagrad.base import NullTimer
from .numerical_guards import BadSteps, NumericalError, fp16_overflow, non_finite
from .objective import DistillStudent, Objective
from .precision import advance_scale, autocast
from .rng import seeded, step_seed
from .teacher_guard import TeacherGuard
from .teacher_objective import TeacherTerms
from .training_state import TrainingState
from .trunk import FrozenTrunk, TrunkOutput, first_rows


class MetaStep:
    """The training step of one distiller. It takes the models and parts it steps (the teacher, its
    learning parameters ``phi`` and the blocks and trunk around them; the student with its feature
    projections and trainable parameters; the objective and the teacher's terms), the run's
    ``TrainingState`` (step count, optimizers, fp16 scaler, guard counters), which it advances, and
    the teacher guard, which says when the teacher stops learning. ``MetaDistiller`` builds one
    (``d.meta_step``) and its ``step``/``meta_gradient`` are this object's."""

    def __init__(self, config: Any, state: TrainingState, *, teacher: nn.Module, phi: list[nn.Parameter],
                 teacher_blocks: Any, teacher_layers: list[int] | None, trunk: FrozenTrunk | None,
                 student: DistillStudent, student_params: list[nn.Parameter], objective: Objective,
                 teacher_terms: TeacherTerms, initial_teacher: Any, guard: TeacherGuard, dist: Dist,
                 device: torch.device, vocab_size: int | None = None, timer: Any = None):
        self.config = config
        self.state = state
        self.teacher, self.phi, self.teacher_blocks = teacher, phi, teacher_blocks
        self.teacher_layers = teacher_layers
        """Indices of the teacher blocks that learn (None: all)."""
        self.trunk = trunk
        """The frozen trunk below the learning blocks (None: none)."""
        self.student, self.student_params = student, student_params
        self.objective, self.teacher_terms, self.initial_teacher = objective, teacher_terms, initial_teacher
        self.guard, self.dist, self.device, self.vocab_size = guard, dist, device, vocab_size
        self.timer = timer
        self.bad = BadSteps(state, lambda: (self._teacher_lr_said(), self._pilot_lr_said()))
        """What the current step found NaN/inf; counts bad steps into ``state``."""

    # ------------------------------------------------------------------ one step
    @property
    def timer(self) -> Any:
        return self._timer

    @timer.setter
    def timer(self, value: Any) -> None:
        self._timer = value if value is not None else NullTimer()

    def autocast(self) -> Any:
        """The ``precision`` setting's autocast context on this device (every forward pass enters it)."""
        return autocast(self.device, self.config.precision)

    def teacher_outputs(self, batch: Mapping[str, Any], checkpointed: bool = False) -> Outputs:
        """Teacher logits and the hidden states the feature loss reads; with ``checkpointed`` the
        blocks keep only their inputs for the backward (see ``teacher_checkpointing``)."""
        layers = set(self.objective.feature_layers.values())
        with self.timer.phase("teacher_forward"), self.autocast():
            if checkpointed and torch.is_grad_enabled():
                with checkpointed_blocks(self.teacher, self.teacher_blocks, only=self.teacher_layers):
                    return run(self.teacher, model_inputs(batch, "teacher"), self.teacher_blocks, layers)
            return run(self.teacher, model_inputs(batch, "teacher"), self.teacher_blocks, layers)

    def _average_student_grads(self, loss: torch.Tensor) -> torch.Tensor:
        """Data-parallel runs: replace the student's gradients (after ``loss.backward()`` on this
        process's shard) and ``loss`` by their means over the processes, in one all-reduce. A
        parameter no process has a gradient for keeps ``grad=None``, as in one process."""
        if not self.dist.distributed:
            return loss
        params = self.student_params
        has = torch.tensor([p.grad is not None for p in params], dtype=loss.dtype, device=loss.device)
        loss_t, has, *grads = self.dist.all_reduce_mean(
            [loss.detach(), has, *[p.grad if p.grad is not None else torch.zeros_like(p) for p in params]])
        for p, g, used in zip(params, grads, has.tolist()):
            p.grad = g if used else None
        return loss_t

    def step(self, batch: Mapping[str, Any], quiz_batch: Mapping[str, Any] | None = None) -> dict[str, float]:
        """One training step: a meta-step (pilot, quiz, teacher update, student update) when the
        mode and ``meta_every`` call for one, else a plain KD step. Returns floats.

        Dropout draws from the global RNG seeded by ``metakd.rng.step_seed(seed, rank, step)``
        (other masks in every step and process); the caller's RNG state is restored after."""
        with seeded(step_seed(self.config.seed, self.dist.rank, self.state.steps_done), self.device):
            return self._step(batch, quiz_batch)

    def _step(self, batch: Mapping[str, Any], quiz_batch: Mapping[str, Any] | None) -> dict[str, float]:
        batch, quiz_batch = self.dist.shard(batch), self.dist.shard(quiz_batch)  # this process's rows
        cfg = self.config
        is_meta = cfg.meta_update != "none" and self.state.steps_done % cfg.meta_every == 0 and self.teacher_learns()
        if is_meta and quiz_batch is None:
            raise ValueError(f"meta_update={cfg.meta_update!r} needs a quiz_batch for the meta-step")
        batch = to_device(batch, self.device)
        self.teacher.eval()
        self.student.train()
        timing = not isinstance(self.timer, NullTimer)
        if timing:
            self.timer.reset()
        start = time.perf_counter()
        metrics: dict[str, float] = {"step": float(self.state.steps_done), "meta": float(is_meta)}
        if is_meta:
            metrics.update(self._meta_update(batch, to_device(quiz_batch, self.device)))
        else:
            metrics["student_loss"] = self._student_step(batch)
        metrics["seconds"] = time.perf_counter() - start
        if timing:
            metrics.update({f"time_{k}": v for k, v in self.timer.totals().items()})
            for prefix, read in (("cpu", "cpu_seconds"), ("mem", "peaks"), ("energy", "energy")):
                values = getattr(self.timer, read, dict)()  # a timer with only phase/totals/reset has none
                metrics.update({f"{prefix}_{k}": float(v) for k, v in values.items() if v is not None})
        self.state.steps_done += 1
        self.bad.close(metrics, self.config)  # sets metrics["skipped"]; too many bad steps in a row raise NumericalError
        return metrics

    def teacher_learns(self) -> bool:
        """Whether the teacher learns at this step: past ``meta_start`` and not stopped by the guard."""
        if self.guard.stopped:
            return False
        if self.state.meta_start_step is None:
            raise ValueError(f"meta_start={self.config.meta_start} is a share of the run: fit resolves it; stepping "
                             "by hand, give meta_start as a step number")
        return self.state.steps_done >= self.state.meta_start_step

    def pilot_lr(self) -> float:
        """The pilot step's size: ``pilot_lr``, or the student's current learning rate ("student")."""
        if self.config.pilot_lr == "student":
            return float(self.state.student_optimizer.param_groups[0]["lr"])
        return float(self.config.pilot_lr)

    def _teacher_terms(self, batch: Mapping[str, Any], trunk: TrunkOutput | None) -> Any:
        """The first-order terms of the teacher's objective on ``batch`` as the backends take them
        (a function of the teacher's and the student's logits), or None when none is active."""
        terms = self.teacher_terms
        if not terms.active:
            return None
        initial = self.initial_teacher_logits(batch, trunk) if terms.needs_initial else None
        mask = model_inputs(batch, "teacher").get("attention_mask") if self.config.task == "causal_lm" else None
        v = self.vocab_size

        def cut(x: Any) -> Any:  # the shared vocabulary of a causal LM, as the inner loss reads it
            return x if x is None or v is None else x[..., :v]

        return lambda teacher, student: terms.loss(cut(teacher), batch, cut(student), cut(initial), mask)

    def initial_teacher_logits(self, batch: Mapping[str, Any], trunk: TrunkOutput | None) -> torch.Tensor:
        """The teacher as it was given (φ at its initial values) on ``batch``: no grad, one forward, or the
        logits kept from an earlier one (``metakd.initial_teacher``)."""
        from torch.func import functional_call

        inputs = dict(model_inputs(batch, "teacher"))

        def forward(phi: dict[str, torch.Tensor]) -> torch.Tensor:
            with (torch.no_grad(), self.timer.phase("teacher_forward"), self.autocast(),
                  self._reusing_trunk(trunk)):
                return functional_call(self.teacher, phi, args=(), kwargs=inputs).logits.detach()

        return self.initial_teacher.logits(inputs, forward)

    def _student_step(self, batch: Mapping[str, Any]) -> float:
        with torch.no_grad():
            t_out = self.teacher_outputs(batch)
        with self.timer.phase("student_step"):
            with self.autocast():
                loss = self.objective.inner(self.student(batch), t_out, batch)
            self.state.student_optimizer.zero_grad(set_to_none=True)
            self.state.scaler.scale(loss).backward()  # also for a NaN/inf loss: every step runs the same backward
            loss = self._average_student_grads(loss)  # data-parallel: the global batch's gradient and loss
            self.state.scaler.unscale_(self.state.student_optimizer)  # fp16: the true gradients (else a no-op)
            value = float(loss.detach())
            bad = non_finite([("student loss", value), ("student gradient", [p.grad for p in self.student_params])])
            if fp16_overflow(bad, self.state.scaler.is_enabled()):
                self.bad.overflow = True  # fp16 loss scale too high: the scaler skips the step and lowers it
                self.state.scaler.step(self.state.student_optimizer)
            elif bad:  # skip: never step on a NaN/inf loss or gradient
                self.bad.found += bad
                self.state.student_optimizer.zero_grad(set_to_none=True)
            else:
                self.state.scaler.step(self.state.student_optimizer)
            self.state.scaler.update()
        return value

    def meta_batch(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """The rows of ``batch`` the meta-gradient uses: the first ``meta_batch_size`` (split evenly
        over data-parallel processes: the first ``meta_batch_size / processes`` of each shard)."""
        size = self.config.meta_batch_size
        if size is not None and self.dist.distributed:
            size //= self.dist.world_size
        return first_rows(batch, size)

    def run_trunk(self, batch: Mapping[str, Any]) -> TrunkOutput | None:
        """The frozen trunk's outputs on ``batch`` (no grad), or None when every block learns. It runs
        in the same autocast as the rest of the teacher: the replayed blocks then give the soft labels
        of a plain KD step's teacher forward."""
        if self.trunk is None:
            return None
        with self.timer.phase("teacher_forward"), self.autocast():
            return self.trunk.run(model_inputs(batch, "teacher"))

    def _reusing_trunk(self, trunk: TrunkOutput | None) -> ContextManager[None]:
        return nullcontext() if trunk is None else self.trunk.reused(trunk)

    def meta_gradient(self, batch: Mapping[str, Any], quiz_batch: Mapping[str, Any],
                      trunk: TrunkOutput | None = None) -> MetaResult:
        """The meta-gradient ``∇_φ L_quiz`` of this batch and quiz batch with the configured backend,
        without stepping anything (the teacher forward, pilot and quiz only), on the first
        ``meta_batch_size`` rows of ``batch``. ``trunk``: the frozen trunk's outputs on ``batch``
        (or more rows), computed here when None."""
        cfg = self.config
        if not self.phi:
            raise ValueError("meta_update='none' has no teacher meta parameters")
        batch, quiz_batch = to_device(batch, self.device), to_device(quiz_batch, self.device)
        self.teacher.eval()
        self.student.train()
        batch = self.meta_batch(batch)
        if trunk is None:
            trunk = self.run_trunk(batch)
        with torch.enable_grad():
            with self._reusing_trunk(trunk):  # the trunk keeps no graph: the teacher backward stops at its output
                t_out = self.teacher_outputs(batch, checkpointed=cfg.teacher_checkpointing)  # attached to φ
            return meta_gradient(cfg.meta_grad, MetaProblem(
                student=self.student, params=self.student_params, objective=self.objective,
                teacher_out=t_out, batch=batch, quiz_batch=quiz_batch, phi=self.phi,
                pilot_lr=self.pilot_lr(), unroll_steps=cfg.unroll_steps, pilot_optimizer=cfg.pilot_optimizer,
                fd_epsilon=cfg.fd_epsilon, fd_scheme=cfg.fd_scheme, timer=self.timer,
                reduce=self.dist.all_reduce_mean if self.dist.distributed else None,
                autocast=self.autocast, loss_scale=self.bad.loss_scale(),
                meta_weight=cfg.meta_weight, teacher_terms=self._teacher_terms(batch, trunk),
            ))

    def _meta_update(self, batch: Mapping[str, Any], quiz_batch: Mapping[str, Any]) -> dict[str, float]:
        cfg = self.config
        # the trunk once per meta-step: on the whole batch when the restore forward replays it
        trunk = self.run_trunk(batch if cfg.pilot == "restore" else self.meta_batch(batch))
        result = self.meta_gradient(batch, quiz_batch, trunk)
        bad = non_finite([("inner loss", result.inner_loss), ("pilot gradient", result.pilot_grads),
                           ("quiz loss", result.quiz_loss), ("meta-gradient", result.phi_grads)])
        if bad:  # skip the whole step before anything is applied: neither the teacher nor the student moves
            if fp16_overflow(bad, self.state.scaler.is_enabled()):  # the loss scale is too high: lower it
                self.bad.overflow = True
                advance_scale(self.state.scaler, found_inf=True)
            else:
                self.bad.found += bad
            return {"inner_loss": result.inner_loss, "quiz_loss": result.quiz_loss, "teacher_grad_norm": math.nan,
                    "student_loss": result.inner_loss}
        with self.timer.phase("teacher_step"):
            for p, g in zip(self.phi, result.phi_grads):
                p.grad = g
            grad_norm = float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in result.phi_grads])))
            if cfg.teacher_grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.phi, cfg.teacher_grad_clip)
            self.state.teacher_optimizer.step()
            self.state.teacher_optimizer.zero_grad(set_to_none=True)

        out = {"inner_loss": result.inner_loss, "quiz_loss": result.quiz_loss, "teacher_grad_norm": grad_norm,
               **result.terms}
        if cfg.pilot == "restore":
            with self._reusing_trunk(trunk):  # the trunk did not change: recompute the learning blocks only
                out["student_loss"] = self._student_step(batch)
        else:
            with self.timer.phase("student_step"):
                for p, g in zip(self.student_params, result.pilot_grads):
                    p.grad = g
                self.state.student_optimizer.step()
                self.state.student_optimizer.zero_grad(set_to_none=True)
                advance_scale(self.state.scaler, found_inf=False)  # fp16: a clean step counts towards the scale's growth
            out["student_loss"] = result.inner_loss
        return out

    def _teacher_lr_said(self) -> str:
        """The teacher's learning rate as the run set it, for an error message."""
        cfg, optimizer = self.config, self.state.teacher_optimizer
        now = optimizer.param_groups[0]["lr"] if optimizer is not None else cfg.teacher_lr
        if cfg.teacher_lr_ratio is not None:
            return f"{now:g} (teacher_lr_ratio {cfg.teacher_lr_ratio:g} x student_lr)"
        return f"{now:g} (teacher_lr {cfg.teacher_lr:g})" if now != cfg.teacher_lr else f"{now:g} (teacher_lr)"

    def _pilot_lr_said(self) -> str:
        """The pilot step's learning rate as the run set it, for an error message."""
        if self.config.pilot_lr == "student":
            return f"{self.pilot_lr():g} (pilot_lr: student, the student's current lr)"
        return f"{self.pilot_lr():g} (pilot_lr)"


__all__ = ["MetaStep", "NumericalError", "fp16_overflow", "meta_gradient"]
