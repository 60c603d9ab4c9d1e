"""What every meta-gradient backend takes and returns, and the steps they share.

Every backend splits the meta-gradient at the teacher's outputs z_T: it computes
``∇_{z_T} L_quiz(θ')`` on the student side (the part that differs between backends) and hands
it to :func:`teacher_backward`, one ordinary backward through the teacher into φ.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Mapping

import torch
from torch import Tensor, nn

from ..forward import Outputs
from ..objective import DistillStudent, Objective
from ..precision import upcast


class NullTimer:
    """Stands in for ``telemetry.PhaseTimer`` when nobody is timing phases."""

    def phase(self, name: str) -> ContextManager[None]:
        return nullcontext()


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
    fd_epsilon: float = 1e-3            # finite_diff: step ε = fd_epsilon / ‖g‖ along g
    fd_scheme: str = "central"          # finite_diff: "central" (θ ± εg) or "forward" (θ + εg and the pilot's θ)
    timer: Any = field(default_factory=NullTimer)  # anything with .phase(name) -> context manager
    reduce: Callable[[list[Tensor]], list[Tensor]] | None = None
    """Data-parallel runs: the mean over processes of a list of tensors (``Dist.all_reduce_mean``),
    applied to the pilot gradient, the quiz gradient g and the meta-gradient (and their losses),
    so each process's shard of the batches adds up to the global batch's result. None: one process."""
    autocast: Callable[[], ContextManager[Any]] = nullcontext
    """A fresh mixed-precision context (``precision.autocast``) entered around every student forward
    and loss of the backend; the backwards run outside it. ``nullcontext``: the weights' precision."""
    meta_weight: float = 1.0
    """Weight of the quiz loss in the teacher's objective (its gradient at the teacher's outputs is
    scaled by it before the teacher backward)."""
    teacher_terms: Callable[[Tensor, Tensor | None], tuple[Tensor, dict[str, float]]] | None = None
    """The first-order terms of the teacher's objective (``metakd.teacher_objective``) as a function of
    the teacher's logits on ``batch`` and the student's logits at θ there: (loss, values). Their
    gradient at the logits joins the quiz loss's, and one backward through the teacher carries both."""
    loss_scale: float = 1.0
    """fp16 loss scaling (a GradScaler's scale): the seeds of the pilot, quiz and teacher backwards are
    multiplied by it and their gradients divided by it, so small fp16 gradients do not underflow."""


@dataclass
class MetaResult:
    phi_grads: list[Tensor]             # ∇_φ L_quiz, one tensor per φ (zeros where unused)
    inner_loss: float                   # L_in at θ (the first pilot step)
    quiz_loss: float                    # L_quiz at θ'
    pilot_grads: list[Tensor]           # ∇_θ L_in(θ, z_T(φ)), detached: the real step of pilot="reuse"
    terms: dict[str, float] = field(default_factory=dict)  # the teacher objective's first-order terms


# ---------------------------------------------------------------------------- data parallel
def reduced(problem: MetaProblem, tensors: list[Tensor]) -> list[Tensor]:
    """``problem.reduce(tensors)`` (the mean over processes), or ``tensors`` in one process."""
    return tensors if problem.reduce is None else list(problem.reduce(tensors))


def reduced_with_loss(problem: MetaProblem, loss: Tensor, grads: list[Tensor]) -> tuple[float, list[Tensor]]:
    """A loss and its gradients averaged over processes in one reduce; the loss as a float."""
    if problem.reduce is None:
        return float(loss.detach()), grads
    loss_t, *grads = problem.reduce([loss.detach(), *grads])
    return float(loss_t), grads


# ---------------------------------------------------------------------------- teacher side
def output_tensors(out: Outputs) -> list[Tensor]:
    """Logits then hidden states in layer order: the teacher outputs L_in reads."""
    return [out.logits] + [out.hidden[k] for k in sorted(out.hidden)]


def detached_outputs(out: Outputs) -> Outputs:
    """A copy of ``out`` whose tensors are fresh leaves that require grad: the student side of a
    backend differentiates with respect to these, the teacher side is one backward later. Half
    precision outputs become float32 leaves (their gradients would underflow in float16)."""
    return Outputs(upcast(out.logits.detach()).requires_grad_(True),
                   {k: upcast(v.detach()).requires_grad_(True) for k, v in out.hidden.items()})


def teacher_backward(problem: MetaProblem, z_grads: list[Tensor | None], student_logits: Tensor | None = None
                     ) -> tuple[list[Tensor], dict[str, float]]:
    """``∇_φ L_T = J_T(φ)ᵀ · (meta_weight·∇_{z_T} L_quiz + ∇_{z_T} L_terms)``: one ordinary backward
    through the teacher, with the gradient of the first-order terms (``problem.teacher_terms``, given
    the student's logits at θ on the batch) added at the logits. Returns the gradients and the terms."""
    z_grads, terms = _with_terms(problem, z_grads, student_logits)
    with problem.timer.phase("teacher_backward"):
        pairs = [(t, g) for t, g in zip(output_tensors(problem.teacher_out), z_grads)
                 if g is not None and t.requires_grad]
        if not pairs:
            return reduced(problem, [torch.zeros_like(p) for p in problem.phi]), terms  # every process joins
        scale = problem.loss_scale
        grads = torch.autograd.grad([t for t, _ in pairs], problem.phi,
                                    [(g * scale if scale != 1.0 else g).to(t.dtype) for t, g in pairs],
                                    allow_unused=True)
        return reduced(problem, [_unscale(g, scale) if g is not None else torch.zeros_like(p)
                                 for g, p in zip(grads, problem.phi)]), terms


def _with_terms(problem: MetaProblem, z_grads: list[Tensor | None], student_logits: Tensor | None
                ) -> tuple[list[Tensor | None], dict[str, float]]:
    """The seeds of the teacher backward: the quiz loss's gradient at the teacher's outputs times
    ``meta_weight``, plus the first-order terms' gradient at the logits (exact: they are functions of
    the logits alone)."""
    w = problem.meta_weight
    seeds = [g if g is None or w == 1.0 else g * w for g in z_grads]
    if problem.teacher_terms is None:
        return seeds, {}
    with problem.timer.phase("teacher_terms"), torch.enable_grad():
        logits = upcast(problem.teacher_out.logits.detach()).requires_grad_(True)
        loss, terms = problem.teacher_terms(logits, student_logits)
        d_logits = torch.autograd.grad(loss, logits, allow_unused=True)[0] if loss.requires_grad else None
    if d_logits is not None:
        seeds[0] = d_logits if seeds[0] is None else seeds[0] + d_logits
    return seeds, terms


def _scaled(loss: Tensor, scale: float) -> Tensor:
    return loss * scale if scale != 1.0 else loss


def _unscale(grad: Tensor, scale: float) -> Tensor:
    return grad / scale if scale != 1.0 else grad


# ---------------------------------------------------------------------------- student side
def require_one_sgd_step(problem: MetaProblem, backend: str) -> None:
    """The first-order backends are exact for one SGD pilot step; say which backend does more."""
    if problem.unroll_steps != 1:
        raise ValueError(f"meta_grad={backend!r} is exact for one pilot step; unroll_steps="
                         f"{problem.unroll_steps} needs meta_grad='higher'")
    if problem.pilot_optimizer != "sgd":
        raise ValueError(f"meta_grad={backend!r} needs an SGD pilot step; pilot_optimizer="
                         f"{problem.pilot_optimizer!r} needs meta_grad='higher'")


def param_names(problem: MetaProblem) -> list[str]:
    """Names of θ inside ``problem.student``, in the order of ``problem.params``."""
    by_id = {id(p): n for n, p in problem.student.named_parameters()}
    try:
        return [by_id[id(p)] for p in problem.params]
    except KeyError:
        raise ValueError("MetaProblem.params must be parameters of MetaProblem.student") from None


def _rng_devices(problem: MetaProblem) -> list[int]:
    device = problem.params[0].device if problem.params else torch.device("cpu")
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


class RngReplay:
    """Replays the random stream of the pilot forward (dropout masks) in later forwards on the same
    batch, so that every pass of the directional derivative sees the pilot's masks; the stream
    after a replay continues where it was."""

    def __init__(self, problem: MetaProblem):
        self.devices = _rng_devices(problem)
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for d, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, d)
            yield


def pilot_gradient(problem: MetaProblem, teacher: Outputs) -> tuple[float, list[Tensor], RngReplay]:
    """``L_in(θ, z_T)`` and ``∇_θ L_in`` (first order), plus the RNG state of that forward."""
    inner_value, grads, rng, _ = pilot_gradient_with_outputs(problem, teacher, keep_outputs=False)
    return inner_value, grads, rng


def pilot_gradient_with_outputs(problem: MetaProblem, teacher: Outputs, keep_outputs: bool = True
                                ) -> tuple[float, list[Tensor], RngReplay, Outputs | None]:
    """:func:`pilot_gradient` plus the pilot forward's student outputs at θ, detached (None
    unless ``keep_outputs``): a later pass at θ with the same dropout masks need not rerun."""
    with problem.timer.phase("pilot"):
        rng = RngReplay(problem)
        with problem.autocast():
            student = problem.student(problem.batch)
            inner = problem.objective.inner(student, teacher, problem.batch)
        grads = torch.autograd.grad(_scaled(inner, problem.loss_scale), problem.params, allow_unused=True)
        grads = [_unscale(g, problem.loss_scale) if g is not None else torch.zeros_like(p)
                 for g, p in zip(grads, problem.params)]
        inner_value, grads = reduced_with_loss(problem, inner, grads)
        kept = (Outputs(student.logits.detach(), {k: v.detach() for k, v in student.hidden.items()})
                if keep_outputs else None)
    return inner_value, grads, rng, kept


def quiz_gradient(problem: MetaProblem, names: list[str], pilot_grads: list[Tensor]
                  ) -> tuple[float, list[Tensor]]:
    """``L_quiz(θ')`` and ``g = ∇_θ' L_quiz`` at ``θ' = θ − η ∇_θ L_in`` (first order)."""
    from torch.func import functional_call

    with problem.timer.phase("quiz"):
        theta_prime = {n: (p.detach() - problem.pilot_lr * g).requires_grad_(True)
                       for n, p, g in zip(names, problem.params, pilot_grads)}
        with problem.autocast():
            quiz = problem.objective.quiz(functional_call(problem.student, theta_prime, (problem.quiz_batch,)),
                                          problem.quiz_batch)
        g = torch.autograd.grad(_scaled(quiz, problem.loss_scale), list(theta_prime.values()), allow_unused=True)
        g = [_unscale(gi, problem.loss_scale) if gi is not None else torch.zeros_like(p)
             for gi, p in zip(g, problem.params)]
        quiz_value, g = reduced_with_loss(problem, quiz, g)
    return quiz_value, g


def student_outputs(problem: MetaProblem, params: Mapping[str, Tensor]) -> tuple[Tensor, dict[int, Tensor]]:
    """The student's (logits, hidden) on the training batch with θ replaced by ``params``: a pytree,
    so that ``torch.func`` transforms can take it."""
    from torch.func import functional_call

    with problem.autocast():
        out = functional_call(problem.student, dict(params), (problem.batch,))
    return out.logits, out.hidden


def loss_gradient_wrt_teacher(problem: MetaProblem, value: Tensor, teacher: Outputs) -> list[Tensor | None]:
    """``−η · ∂value/∂z_T`` for each teacher output (None where value does not read it)."""
    tensors = output_tensors(teacher)
    if not value.requires_grad:
        return [None] * len(tensors)
    grads = torch.autograd.grad(value, tensors, allow_unused=True)
    return [None if g is None else -problem.pilot_lr * g for g in grads]


__all__ = ["MetaProblem", "MetaResult", "NullTimer", "RngReplay", "detached_outputs", "loss_gradient_wrt_teacher",
           "output_tensors", "param_names", "pilot_gradient", "pilot_gradient_with_outputs", "quiz_gradient", "reduced", "reduced_with_loss",
           "require_one_sgd_step",
           "student_outputs", "teacher_backward"]
