"""What every meta-gradient backend takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import Tensor, nn

from ..forward import Outputs
from ..objective import DistillStudent, Objective


@dataclass
class MetaProblem:
    """One meta-gradient computation.

    ``teacher_out`` must still be attached to the graph of φ: the backend differentiates the
    quiz loss after the pilot step through it.
    """

    student: DistillStudent
    params: list[nn.Parameter]          # θ: the student parameters the pilot step updates
    objective: Objective
    teacher_out: Outputs                # z_T(φ) (and hidden states), with grad to φ
    batch: Mapping[str, Any]            # training batch of the pilot step
    quiz_batch: Mapping[str, Any]       # held-out quiz batch
    phi: list[nn.Parameter]             # teacher meta parameters
    pilot_lr: float
    unroll_steps: int = 1
    pilot_optimizer: str = "sgd"


@dataclass
class MetaResult:
    phi_grads: list[Tensor]             # ∇_φ L_quiz, one tensor per φ (zeros where unused)
    inner_loss: float                   # L_in at θ (the first pilot step)
    quiz_loss: float                    # L_quiz at θ'
    pilot_grads: list[Tensor]           # ∇_θ L_in(θ, z_T(φ)), detached: the real step of pilot="reuse"
