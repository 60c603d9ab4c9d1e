"""Exact meta-gradient for one SGD pilot step with forward-mode AD and no second-order graph
through the student.

With ``g = ∇_θ' L_quiz(θ')`` the meta-gradient is ``−η ∂/∂z_T ⟨∇_θ L_in(θ, z_T), g⟩``. The inner
product is the directional derivative of L_in along g, ``⟨∂L_in/∂z_S, u⟩`` with
``u = J_S(θ)·g``: one ``torch.func.jvp`` of the student's outputs. Differentiating that with
respect to every teacher output L_in reads (logits and hidden states) is a double backward of
the loss function alone, on ``[B, C]``/``[B, L, H]`` tensors; then one ordinary backward runs
through the teacher. Forward-mode AD needs kernels with forward derivatives: the student must
use eager attention (fused SDPA kernels have none).
"""

from __future__ import annotations

import torch
from torch.func import jvp

from ..forward import Outputs
from .base import (MetaProblem, MetaResult, detached_outputs, loss_gradient_wrt_teacher, output_tensors, param_names,
                   pilot_gradient, quiz_gradient, require_one_sgd_step, student_outputs, teacher_backward)


def jvp_meta_gradient(problem: MetaProblem) -> MetaResult:
    """∇_φ L_quiz(θ − η∇_θ L_in) via a forward-mode JVP of the student along g = ∇_θ' L_quiz."""
    require_one_sgd_step(problem, "jvp")
    teacher = detached_outputs(problem.teacher_out)
    names = param_names(problem)
    inner, pilot_grads, rng = pilot_gradient(problem, teacher)
    quiz, g = quiz_gradient(problem, names, pilot_grads)
    with problem.timer.phase("directional_derivative"):
        theta = {n: p.detach() for n, p in zip(names, problem.params)}
        with torch.no_grad(), rng.replay():
            (logits, hidden), (u_logits, u_hidden) = jvp(lambda ps: student_outputs(problem, ps),
                                                         (theta,), (dict(zip(names, g)),))
        student = detached_outputs(Outputs(logits, hidden))
        loss = problem.objective.inner(student, teacher, problem.batch)
        d_student = torch.autograd.grad(loss, output_tensors(student), create_graph=True, allow_unused=True)
        tangents = output_tensors(Outputs(u_logits, u_hidden))
        directional = sum((d * u).sum() for d, u in zip(d_student, tangents) if d is not None)
        z_grads = loss_gradient_wrt_teacher(problem, directional, teacher)
    phi_grads, terms = teacher_backward(problem, z_grads, logits)  # the student's logits at θ (pilot masks)
    return MetaResult(phi_grads, inner, quiz, pilot_grads, terms)
