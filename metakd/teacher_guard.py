"""The teacher guard: a meta-update never damages the teacher unnoticed.

At every evaluation the guard scores the teacher on the validation split. When its accuracy falls
more than ``teacher_guard_points`` below the accuracy it started with, the guard restores the
teacher's learning parameters (φ: the adapters, or the learning blocks' weights in full mode) to
their best state so far, halves the teacher's learning rate (its schedule's base too) and clears
the teacher optimizer's moments; after ``teacher_guard_trips`` trips the teacher stops learning
for the rest of the run. Every trip is logged and kept in the run's history and checkpoints.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import Tensor, nn

log = logging.getLogger("metakd.distiller")


class TeacherGuard:
    """Owned by ``MetaDistiller`` (``d.guard``); ``fit`` calls :meth:`begin` and :meth:`check`."""

    def __init__(self, phi: list[nn.Parameter], points: float, max_trips: int, enabled: bool):
        self.phi = phi
        self.points = float(points)
        self.max_trips = int(max_trips)
        self.enabled = bool(enabled and phi)
        self.start_accuracy: float | None = None
        self.best_accuracy: float | None = None
        self.best_step: int | None = None
        self.last_accuracy: float | None = None
        self.best_state: list[Tensor] | None = None
        self.trips: list[dict[str, Any]] = []
        self.stopped = False
        """True after ``max_trips`` trips: no more meta-updates in this run."""

    # ------------------------------------------------------------------ watching
    @property
    def watching(self) -> bool:
        return self.enabled and self.start_accuracy is not None

    def begin(self, score: Callable[[], float], step: int) -> None:
        """Score the teacher as given (once per run: a resumed run keeps the start it saved)."""
        if not self.enabled or self.start_accuracy is not None:
            return
        accuracy = float(score())
        self.start_accuracy = self.best_accuracy = self.last_accuracy = accuracy
        self.best_step = step
        self.best_state = [p.detach().clone() for p in self.phi]

    def check(self, step: int, score: Callable[[], float], optimizer: torch.optim.Optimizer | None,
              scheduler: Any = None) -> dict[str, Any]:
        """Score the teacher at ``step``; trip (restore, halve the lr, maybe stop) when it fell too far.
        Returns the evaluation point's teacher figures."""
        if not self.watching:
            return {}
        accuracy = float(score())
        self.last_accuracy = accuracy
        floor = self.start_accuracy - self.points / 100.0
        if accuracy < floor:
            self._trip(step, accuracy, optimizer, scheduler)
            return {"teacher_validation_accuracy": accuracy, "teacher_guard_trip": 1.0}
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_step = accuracy, step
            self.best_state = [p.detach().clone() for p in self.phi]
        return {"teacher_validation_accuracy": accuracy, "teacher_guard_trip": 0.0}

    def _trip(self, step: int, accuracy: float, optimizer: torch.optim.Optimizer | None, scheduler: Any) -> None:
        with torch.no_grad():
            for p, best in zip(self.phi, self.best_state):
                p.copy_(best)
        lr = None
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
            lr = optimizer.param_groups[0]["lr"]
            optimizer.state.clear()  # the moments pointed the way that did the damage
        if scheduler is not None:
            scheduler.base_lrs = [b * 0.5 for b in scheduler.base_lrs]
        self.trips.append({"step": step, "accuracy": accuracy, "restored_to_step": self.best_step,
                           "restored_accuracy": self.best_accuracy, "teacher_lr": lr})
        self.last_accuracy = self.best_accuracy
        if len(self.trips) >= self.max_trips:
            self.stopped = True
        log.warning("step %d: teacher guard tripped (%d of %d): the teacher's validation accuracy fell to %.2f%% "
                    "(start %.2f%%, limit %.1f points); restored its state of step %d (%.2f%%) and halved its lr%s",
                    step, len(self.trips), self.max_trips, 100 * accuracy, 100 * self.start_accuracy, self.points,
                    self.best_step, 100 * self.best_accuracy,
                    "; the teacher stops learning for the rest of the run" if self.stopped else "")

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        """For ``metrics.json``: start, best and final validation accuracy, trips, whether it stopped."""
        return {"enabled": self.enabled, "watching": self.watching, "start_accuracy": self.start_accuracy,
                "best_accuracy": self.best_accuracy, "best_step": self.best_step,
                "final_accuracy": self.last_accuracy, "trips": list(self.trips), "trip_count": len(self.trips),
                "stopped": self.stopped, "points": self.points}

    def final_line(self) -> str | None:
        """One line for the end of a run when the teacher ends worse than it started, was restored, or
        was not watched; None when it ends at least as good as it started."""
        if not self.enabled:
            return None
        if self.start_accuracy is None:
            return ("teacher guard: no validation split (validation_fraction is 0), so the meta-updated teacher's "
                    "accuracy was not checked")
        tail = f"; the guard tripped {len(self.trips)} time(s)" + (" and stopped its meta-updates" if self.stopped
                                                                    else "") if self.trips else ""
        if self.last_accuracy < self.start_accuracy:
            return (f"teacher guard: the teacher ends at {100 * self.last_accuracy:.2f}% validation accuracy, "
                    f"{100 * (self.start_accuracy - self.last_accuracy):.2f} points below the "
                    f"{100 * self.start_accuracy:.2f}% it started at{tail}")
        if self.trips:
            return (f"teacher guard: the teacher ends at {100 * self.last_accuracy:.2f}% validation accuracy "
                    f"(start {100 * self.start_accuracy:.2f}%){tail}")
        return None

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(JSON part, tensors) for a checkpoint."""
        meta = {k: getattr(self, k) for k in ("start_accuracy", "best_accuracy", "best_step", "last_accuracy",
                                              "trips", "stopped")}
        tensors = {f"guard.best.{i}": t.detach().cpu().contiguous() for i, t in enumerate(self.best_state or [])}
        return meta, tensors

    def load(self, meta: dict[str, Any] | None, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state` saved (a checkpoint from before the guard: a fresh guard)."""
        if not meta:
            return
        for key in ("start_accuracy", "best_accuracy", "best_step", "last_accuracy", "trips", "stopped"):
            setattr(self, key, meta.get(key, getattr(self, key)))
        best = [tensors[f"guard.best.{i}"] for i in range(len(self.phi)) if f"guard.best.{i}" in tensors]
        self.best_state = ([t.to(p.device, p.dtype) for t, p in zip(best, self.phi)]
                           if len(best) == len(self.phi) else None)


__all__ = ["TeacherGuard"]
