"""Meta-gradient for one SGD pilot step by finite differences (DARTS-style): no second-order
graph and no forward-mode AD, so any attention kernel, and anything that runs forward, works.

``⟨∇_θ L_in(θ, z_T), g⟩ ≈ [L_in(θ + εg, z_T) − L_in(θ − εg, z_T)] / 2ε`` (``fd_scheme="central"``)
with two no-grad student forwards, or ``[L_in(θ + εg, z_T) − L_in(θ, z_T)] / ε`` (``"forward"``)
with one, the student outputs at θ being the pilot forward's (same dropout masks); its gradient
with respect to the teacher outputs, times −η, goes back through the teacher.
``ε = fd_epsilon / ‖g‖``, so the step in parameter space has length ``fd_epsilon``; the error is
O(ε²) for the central scheme, O(ε) for the forward one. When the
student's forwards run in bfloat16/float16 (autocast, or half weights) the step length is at least
:data:`HALF_PRECISION_STEP` (central) or :data:`FORWARD_HALF_PRECISION_STEP` (forward) of that dtype:
a 1e-3 step is lost in half-precision rounding of the weights and logits (see :func:`step_length`).
The forward scheme is refused under bfloat16: no step length makes it accurate there.
"""

from __future__ import annotations

import math

import torch

from ..forward import Outputs
from ..precision import PrecisionError, active_dtype
from .base import (MetaProblem, MetaResult, detached_outputs, loss_gradient_wrt_teacher, output_tensors, param_names,
                   pilot_gradient_with_outputs, quiz_gradient, require_one_sgd_step, student_outputs, teacher_backward)


HALF_PRECISION_STEP = {torch.bfloat16: 1e-2, torch.float16: 3e-3}
"""Smallest step length in parameter space for forwards in these dtypes. Measured on CPU on the test
models (tiny BERT/GPT-2, 2 seeds, with and without feature layers) against the fp32 reference: under
bf16 a 1e-3 step had up to 9% relative error, 1e-2 at most 1.6% (jvp's own bf16 error: up to 1.7%
on the same problems, 6% on one); steps ≥ 4e-2 grow the O(ε²) error (14% on GPT-2). Under fp16
(3 more mantissa bits) 3e-3 was at most 0.5% on GPT-2, where 1e-3 reached 1.3%."""


FORWARD_HALF_PRECISION_STEP = {torch.float16: 2e-3}
"""The same for ``fd_scheme="forward"``, measured the same way (CPU, the tests' tiny BERT/GPT-2,
seeds 0 and 2, with and without feature layers, against the fp32 ``higher`` meta-gradient; worst
relative error over the 8 problems). fp16: 5e-4 7.7%, 1e-3 1.9%, 1.5e-3 1.9%, 2e-3 1.6%, 3e-3 (the
central floor) 2.8%, 5e-3 4.4%, 1e-2 7.0% (central at 3e-3: 0.6%; jvp: 0.3%). bfloat16 has no
entry: the error is rounding divided by ε below 1e-2 and O(ε) truncation above, and no step gets the
GPT-2 problems near the central scheme: 1e-3 19%, 3e-3 9.0%, 5e-3 5.4%, 7e-3 4.1%, 1e-2 6.7%, 2e-2
13%, 3e-2 20%, 5e-2 30%, 1e-1 51% (central at 1e-2: 1.6%; jvp: 0.6%), so :func:`step_length` refuses it."""

FORWARD_BF16 = ("fd_scheme='forward' under bfloat16: the one-sided difference errs 4% or more on the test models "
                "at every step length from 1e-3 to 1e-1 (bf16 rounding below 1e-2, its O(step) error above; "
                "'central': 1.6%); use fd_scheme='central' (one more student forward), meta_grad='jvp', or "
                "precision='fp16'/'fp32'")


def step_length(fd_epsilon: float, dtype: torch.dtype, scheme: str = "central") -> float:
    """The parameter-space step of the ``scheme`` difference: ``fd_epsilon``, raised to what ``dtype``
    resolves when the forwards run in half precision. PrecisionError for the forward scheme under
    bfloat16 (see :data:`FORWARD_HALF_PRECISION_STEP`)."""
    if scheme == "forward":
        if dtype == torch.bfloat16:
            raise PrecisionError(FORWARD_BF16)
        return max(fd_epsilon, FORWARD_HALF_PRECISION_STEP.get(dtype, 0.0))
    return max(fd_epsilon, HALF_PRECISION_STEP.get(dtype, 0.0))


def finite_diff_meta_gradient(problem: MetaProblem) -> MetaResult:
    """∇_φ L_quiz(θ − η∇_θ L_in) with the directional derivative by central differences."""
    require_one_sgd_step(problem, "finite_diff")
    if not (problem.fd_epsilon > 0 and math.isfinite(problem.fd_epsilon)):
        raise ValueError(f"fd_epsilon must be a positive number, got {problem.fd_epsilon!r}")
    if problem.fd_scheme not in ("central", "forward"):
        raise ValueError(f"fd_scheme must be 'central' or 'forward', got {problem.fd_scheme!r}")
    forward = problem.fd_scheme == "forward"
    with problem.autocast():  # the dtype the student's forwards run in
        dtype = active_dtype(problem.params[0].device, problem.params[0].dtype)
    step = step_length(problem.fd_epsilon, dtype, problem.fd_scheme)  # before any work: a refusal comes first
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
            eps = step / norm
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
