"""The numerical guards of the training step: every NaN/inf loss or gradient is found before
anything is applied, the step is skipped and counted, an fp16 loss-scale overflow is told apart
from a numerical fault, and ``max_bad_steps`` bad steps in a row stop the run with a
:class:`NumericalError` that names the quantities and the likely causes with the run's settings."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import torch

log = logging.getLogger("metakd.distiller")


class NumericalError(RuntimeError):
    """``max_bad_steps`` steps in a row had a NaN/inf loss or gradient (each was skipped, never
    applied); the message names the quantity and the likely causes with the run's settings."""


def finite(value: float | torch.Tensor | Sequence[torch.Tensor | None]) -> bool:
    """Whether a loss (a float) or every tensor of a list of gradients is free of NaN and inf
    (one host sync for the list)."""
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    tensors = [value] if isinstance(value, torch.Tensor) else [t for t in value if t is not None]
    if not tensors:
        return True
    device = tensors[0].device
    return bool(torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all())


def non_finite(quantities: Sequence[tuple[str, Any]]) -> tuple[str, ...]:
    """The names of the (name, value) pairs whose value holds a NaN or inf, in order."""
    return tuple(name for name, value in quantities if not finite(value))


_GRADIENTS = frozenset({"student gradient", "pilot gradient", "meta-gradient"})


def fp16_overflow(bad: Sequence[str], loss_scaling: bool) -> bool:
    """The one rule telling an fp16 loss-scale overflow from a numerical fault. ``bad``: a step's
    NaN/inf quantities in the order they are computed (:func:`non_finite`; a plain step: student loss,
    student gradient; a meta-step: inner loss, pilot gradient, quiz loss, meta-gradient). With loss
    scaling on, the step overflowed when the first of them is a gradient: every loss before it is
    finite, so the scaled backward overflowed, and what follows it (a NaN quiz loss at θ − η·inf) is
    its consequence. Such a step is skipped and the scale lowered; the numerical guards do not count it."""
    return loss_scaling and bool(bad) and bad[0] in _GRADIENTS


def join_names(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


class BadSteps:
    """What the current step found NaN/inf, and whether its fp16 gradients overflowed; at the end of
    each step :meth:`close` counts it in the training state's ``skipped_steps`` / ``bad_in_a_row``,
    logs it and marks the step's metrics. ``lrs_said()`` gives the teacher's and the pilot step's
    learning rates as the run set them, for the error message of a meta mode."""

    def __init__(self, state: Any, lrs_said: Callable[[], tuple[str, str]]):
        self.state = state
        self.lrs_said = lrs_said
        self.found: tuple[str, ...] = ()
        """What the current step found NaN/inf (cleared by :meth:`close`)."""
        self.overflow = False
        """The current step's fp16 gradients overflowed at the current loss scale."""
        self.streak: tuple[str, ...] = ()
        """What the current run of bad steps found NaN/inf."""

    def loss_scale(self) -> float:
        """The fp16 loss scale (1.0 without loss scaling)."""
        scaler = self.state.scaler
        return float(scaler.get_scale()) if scaler.is_enabled() else 1.0

    def close(self, metrics: dict[str, float], config: Any) -> None:
        """Count, log and mark (``metrics["skipped"]``) a step whose update was skipped for a NaN/inf
        loss or gradient; raise NumericalError when ``max_bad_steps`` are bad in a row."""
        bad, self.found = self.found, ()
        overflow, self.overflow = self.overflow, False
        state = self.state
        metrics["skipped"] = float(bool(bad) or overflow)
        if state.scaler.is_enabled():
            metrics["loss_scale"] = self.loss_scale()
        if overflow and not bad:  # fp16 loss-scale overflow: skipped by the scaler, not a numerical fault
            log.info("step %d skipped: fp16 gradients overflowed; loss scale lowered to %g", int(metrics["step"]),
                     self.loss_scale())
            return
        if not bad:
            state.bad_in_a_row, self.streak = 0, ()
            return
        cfg = config
        state.skipped_steps += 1
        state.bad_in_a_row += 1
        self.streak += tuple(b for b in bad if b not in self.streak)
        step = int(metrics["step"])
        if not metrics["meta"]:
            kept = "the student not updated"
        elif bad[0] in ("student loss", "student gradient"):  # pilot="restore": the teacher stepped already
            kept = "the student not updated (the teacher's meta-update was applied)"
        else:
            kept = "neither the teacher nor the student updated"
        log.warning("step %d skipped: %s NaN/inf, %s (%d bad in a row, %d in all; the run stops at "
                    "max_bad_steps=%d in a row)", step, join_names(bad), kept, state.bad_in_a_row,
                    state.skipped_steps, cfg.max_bad_steps)
        if state.bad_in_a_row >= cfg.max_bad_steps:
            raise self._error(step, cfg)

    def _error(self, step: int, cfg: Any) -> NumericalError:
        n, what = self.state.bad_in_a_row, self.streak
        causes = [f"student_lr {cfg.student_lr} too high ({cfg.student_optimizer})",
                  f"temperature {cfg.temperature} too low (soft labels overflow)"]
        if cfg.meta_update != "none":
            teacher_lr, pilot_lr = self.lrs_said()
            causes += [f"the teacher's lr {teacher_lr} too high",
                       f"the pilot step's lr {pilot_lr} too large (the pilot step diverges; "
                       f"meta_update={cfg.meta_update!r})"]
        return NumericalError(
            f"{join_names(what)} {'was' if len(what) == 1 else 'were'} NaN/inf in {n} steps in a row "
            f"(steps {step - n + 1}-{step}); likely causes: {', '.join(causes)}, or NaN/inf in the data or the "
            f"teacher's outputs. Lower the learning rates or raise the temperature (each bad step was skipped; "
            f"max_bad_steps={cfg.max_bad_steps} in a row stop the run)")
