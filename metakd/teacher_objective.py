"""The first-order terms of the teacher's objective, beside the quiz loss through the pilot step:

    L_T = meta_weight·L_quiz(θ'(φ)) + ce_weight·CE(T_φ(x), y)
          + student_weight·T²·KL(p_S ‖ p_T) + anchor_weight·T²·KL(p_T0 ‖ p_T)

Each extra term is a function of the teacher's logits on the training batch (the forward the
meta-gradient already runs), so its gradient joins the quiz loss's at the teacher's outputs and
one backward through the teacher carries both (``metakd.metagrad.base.teacher_backward``). Pure:
tensors in, a loss and its parts out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from . import losses

TERM_NAMES = ("teacher_ce", "teacher_student_kl", "teacher_anchor_kl")
"""The names of the terms' (unweighted) values in a step's metrics and ``log.jsonl``."""


@dataclass(frozen=True)
class TeacherTerms:
    """The weights of the first-order terms and what they need to be computed."""

    ce_weight: float = 0.0
    student_weight: float = 0.0
    anchor_weight: float = 0.0
    temperature: float = 1.0
    task: str = "classification"
    lm_chunk_size: int | None = 1024

    @classmethod
    def from_config(cls, config: Any) -> "TeacherTerms":
        return cls(config.teacher_ce_weight, config.teacher_student_weight, config.teacher_anchor_weight,
                   config.temperature, config.task, config.lm_chunk_size)

    @property
    def active(self) -> bool:
        return self.ce_weight > 0 or self.student_weight > 0 or self.anchor_weight > 0

    @property
    def needs_initial(self) -> bool:
        """Whether the anchor needs the initial teacher's logits."""
        return self.anchor_weight > 0

    def loss(self, teacher: Tensor, batch: Mapping[str, Any], student: Tensor | None = None,
             initial: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """The weighted sum of the active terms on ``teacher`` logits (``[B, C]``, or ``[B, L, V]``
        for a causal LM, averaged over the positions where ``mask`` is 1) and each term's value.
        ``student``: the student's logits at θ on the same batch; ``initial``: the initial teacher's."""
        total = teacher.new_zeros(())
        values: dict[str, float] = {}
        t2 = float(self.temperature) ** 2
        if self.ce_weight > 0:
            if self.task == "causal_lm":
                ce = losses.next_token_ce(teacher, batch["labels"], self.lm_chunk_size)
            else:
                ce = losses.hard_ce(teacher, batch["labels"])
            total = total + self.ce_weight * ce
            values["teacher_ce"] = float(ce.detach())
        for name, weight, target in (("teacher_student_kl", self.student_weight, student),
                                     ("teacher_anchor_kl", self.anchor_weight, initial)):
            if weight <= 0:
                continue
            if target is None:
                raise ValueError(f"{name} needs the {'student' if name == 'teacher_student_kl' else 'initial teacher'}'s "
                                 "logits on the batch")
            kl = t2 * _mean_rows(_kl_rows(target.detach().to(teacher.dtype), teacher, self.temperature), mask,
                                 self.task)
            total = total + weight * kl
            values[name] = float(kl.detach())
        return total, values


def _kl_rows(target: Tensor, logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(target/T) ‖ softmax(logits/T)) per row (position) of ``[..., C]`` logits."""
    flat_t, flat = target.reshape(-1, target.shape[-1]), logits.reshape(-1, logits.shape[-1])
    return losses.divergence_rows(flat, flat_t, temperature, "forward_kl")


def _mean_rows(rows: Tensor, mask: Tensor | None, task: str) -> Tensor:
    if task != "causal_lm" or mask is None:
        return rows.mean()
    w = mask.reshape(-1).to(rows.dtype)
    return (rows * w).sum() / w.sum().clamp_min(1.0)


__all__ = ["TERM_NAMES", "TeacherTerms"]
