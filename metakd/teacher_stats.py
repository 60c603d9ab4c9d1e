"""What a meta-update does to the teacher's labels (``track_teacher``): on a fixed set of
evaluation examples, the teacher's accuracy, the mean entropy of its soft labels at the
distillation temperature, and KL(initial teacher || current teacher) between its soft labels."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn


@torch.no_grad()
def teacher_logits(teacher: nn.Module, data: Sequence, batch_size: int, pad: Mapping[str, int] | int,
                   device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a classifier teacher on encoded ``data``, in eval mode, without moving the global RNG."""
    from . import data as data_mod
    from .forward import model_inputs, to_device

    was_training = teacher.training
    teacher.eval()
    logits, labels = [], []
    with torch.random.fork_rng(devices=[]):
        try:
            for batch in data_mod.loader(list(data), batch_size, data_mod.make_collator(pad), shuffle=False):
                batch = to_device(batch, device)
                logits.append(teacher(**model_inputs(batch, "teacher")).logits.float().cpu())
                labels.append(batch["labels"].cpu())
        finally:
            teacher.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def label_stats(logits: torch.Tensor, labels: torch.Tensor, initial: torch.Tensor,
                temperature: float) -> dict[str, float]:
    """``teacher_accuracy``, ``teacher_entropy`` (mean entropy in nats of softmax(logits / T)) and
    ``teacher_kl_from_initial`` (mean KL(softmax(initial / T) || softmax(logits / T)))."""
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    log_q0 = torch.log_softmax(initial / temperature, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1).mean()
    kl = (log_q0.exp() * (log_q0 - log_p)).sum(-1).mean()
    return {"teacher_accuracy": float((logits.argmax(-1) == labels).float().mean()),
            "teacher_entropy": float(entropy), "teacher_kl_from_initial": float(kl)}


def mean_entropy(logits: torch.Tensor, temperature: float) -> float:
    """Mean entropy (nats) of softmax(logits / temperature)."""
    log_p = torch.log_softmax(logits / temperature, dim=-1)
    return float(-(log_p.exp() * log_p).sum(-1).mean())


def temperature_for_entropy(logits: torch.Tensor, target: float, low: float = 0.05, high: float = 100.0,
                            iterations: int = 60) -> float:
    """The temperature at which ``logits``' soft labels have mean entropy ``target`` (bisection;
    entropy grows with temperature). Clamped to [low, high] when the target lies outside."""
    if mean_entropy(logits, low) >= target:
        return low
    if mean_entropy(logits, high) <= target:
        return high
    for _ in range(iterations):
        mid = (low * high) ** 0.5  # bisect on a log scale
        if mean_entropy(logits, mid) < target:
            low = mid
        else:
            high = mid
    return (low * high) ** 0.5


class TeacherTracker:
    """Scores the teacher on the first ``n`` examples of ``data`` (``label_stats``), against its
    soft labels when the tracker was made."""

    def __init__(self, distiller: Any, data: Sequence, n: int):
        self.distiller = distiller
        self.data = [data[i] for i in range(min(n, len(data)))]
        self.initial_logits, self.labels = self._logits()
        self._frozen: dict[str, float] | None = None

    def _logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.distiller
        return teacher_logits(d.teacher, self.data, d.config.eval_batch_size, d.pad_ids(), d.device)

    def stats(self) -> dict[str, float]:
        """The teacher's current figures (plain KD: the teacher is frozen, scored once)."""
        d = self.distiller
        if d.config.meta_update == "none":
            if self._frozen is None:
                self._frozen = label_stats(self.initial_logits, self.labels, self.initial_logits, d.config.temperature)
            return dict(self._frozen)
        logits, _ = self._logits()
        return label_stats(logits, self.labels, self.initial_logits, d.config.temperature)


__all__ = ["TeacherTracker", "label_stats", "mean_entropy", "teacher_logits", "temperature_for_entropy"]
