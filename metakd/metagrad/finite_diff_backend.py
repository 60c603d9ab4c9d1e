"""Meta-gradient for one SGD pilot step by finite differences (DARTS-style): no second-order
graph and no forward-mode AD, so any attention kernel, and anything that runs forward, works.

``⟨∇_θ L_in(θ, z_T), g⟩ ≈ [L_in(θ + εg, z_T) − L_in(θ − εg, z_T)] / 2ε`` (``fd_scheme="central"``)
with two no-grad student forwards, or ``[L_in(θ + εg, z_T) − L_in(θ, z_T)] / ε`` (``"forward"``)
with one, the student outputs at θ being the pilot forward's (same dropout masks); its gradient
with respect to the teacher outputs, times −η, goes back through the teacher.
``ε = fd_epsilon / ‖g‖``, so the step in parameter space has length ``fd_epsilon``; the error is
O(ε²) for the central scheme, O(ε) for the forward one. When the
student's forwards run in bfloat16/float16 (autocast, or half weights) the step length is at least
:data:`HALF_PRECISION_STEP` of that dtype: a 1e-3 step is lost in half-precision rounding of the
weights and logits (see :func:`step_length`).
"""

from __future__ import annotations

import math

import torch

from ..forward import Outputs
from ..precision import active_dtype
from .base import (MetaProblem, MetaResult, detached_outputs, loss_gradient_wrt_teacher, output_tensors, param_names,
                   pilot_gradient_with_outputs, quiz_gradient, require_one_sgd_step, student_outputs, teacher_backward)


HALF_PRECISION_STEP = {torch.bfloat16: 1e-2, torch.float16: 3e-3}
"""Smallest step length in parameter space for forwards in these dtypes. Measured on CPU on the test
models (tiny BERT/GPT-2, 2 seeds, with and without feature layers) against the fp32 reference: under
bf16 a 1e-3 step had up to 9% relative error, 1e-2 at most 1.6% (jvp's own bf16 error: up to 1.7%
on the same problems, 6% on one); steps ≥ 4e-2 grow the O(ε²) error (14% on GPT-2). Under fp16
(3 more mantissa bits) 3e-3 was at most 0.5% on GPT-2, where 1e-3 reached 1.3%."""


def step_length(fd_epsilon: float, dtype: torch.dtype) -> float:
    """The parameter-space step of the central difference: ``fd_epsilon``, raised to what ``dtype``
    resolves when the forwards run in half precision."""
    return max(fd_epsilon, HALF_PRECISION_STEP.get(dtype, 0.0))


def finite_diff_meta_gradient(problem: MetaProblem) -> MetaResult:
    """∇_φ L_quiz(θ − η∇_θ L_in) with the directional derivative by central differences."""
    require_one_sgd_step(problem, "finite_diff")
    if not (problem.fd_epsilon > 0 and math.isfinite(problem.fd_epsilon)):
        raise ValueError(f"fd_epsilon must be a positive number, got {problem.fd_epsilon!r}")
    if problem.fd_scheme not in ("central", "forward"):
        raise ValueError(f"fd_scheme must be 'central' or 'forward', got {problem.fd_scheme!r}")
    forward = problem.fd_scheme == "forward"
    teacher = detached_outputs(problem.teacher_out)
    names = param_names(problem)
    inner, pilot_grads, rng, at_theta = pilot_gradient_with_outputs(problem, teacher,
                                                                  keep_outputs=forward or problem.teacher_terms is not None)
    quiz, g = quiz_gradient(problem, names, pilot_grads)
    with problem.timer.phase("directional_derivative"):
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in g])))
        if norm == 0.0 or not math.isfinite(norm):
            z_grads = [None] * len(output_tensors(teacher))
        else:
            with problem.autocast():  # the dtype the two forwards will run in
                dtype = active_dtype(problem.params[0].device, problem.params[0].dtype)
            eps = step_length(problem.fd_epsilon, dtype) / norm
            sides = []
            for sign in ((1.0,) if forward else (1.0, -1.0)):
                shifted = {n: p.detach() + (sign * eps) * gi for n, p, gi in zip(names, problem.params, g)}
                with torch.no_grad(), rng.replay():
                    sides.append(Outputs(*student_outputs(problem, shifted)))
                del shifted
            if forward:
                diff = (problem.objective.inner(sides[0], teacher, problem.batch)
                        - problem.objective.inner(at_theta, teacher, problem.batch)) / eps
            else:
                diff = (problem.objective.inner(sides[0], teacher, problem.batch)
                        - problem.objective.inner(sides[1], teacher, problem.batch)) / (2 * eps)
            z_grads = loss_gradient_wrt_teacher(problem, diff, teacher)
    phi_grads, terms = teacher_backward(problem, z_grads, at_theta.logits if at_theta is not None else None)
    if not math.isfinite(norm):  # a NaN/inf quiz gradient: say so (the step guard skips the update), never zero
        phi_grads = [torch.full_like(x, float("nan")) for x in phi_grads]
    return MetaResult(phi_grads, inner, quiz, pilot_grads, terms)
