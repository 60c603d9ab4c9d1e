"""The reference backend: unroll the pilot step(s) with ``higher`` and backpropagate the quiz
loss through the whole double-backward graph. Exact for any number of steps, SGD or Adam."""

from __future__ import annotations

import warnings

import higher
import torch
from torch import nn

from .base import MetaProblem, MetaResult, detached_outputs, output_tensors, teacher_backward


def _pilot_optimizer(problem: MetaProblem) -> torch.optim.Optimizer:
    if problem.pilot_optimizer == "sgd":
        return torch.optim.SGD(problem.params, lr=problem.pilot_lr)
    if problem.pilot_optimizer == "adam":
        return torch.optim.Adam(problem.params, lr=problem.pilot_lr)
    raise ValueError(f"the higher backend has no pilot optimizer {problem.pilot_optimizer!r}")


def _slice_to_list(self: nn.ModuleList, index):
    if isinstance(index, slice):
        return list(self._modules.values())[index]
    return nn.ModuleList.__getitem__(self, index)


def _allow_module_list_slices(fmodel: nn.Module) -> None:
    """higher's patched copy of an ``nn.ModuleList`` cannot build a slice of itself (its class
    needs extra constructor arguments); Llama-style models iterate ``self.layers[:n]``. Slices of
    the patched lists return plain lists of the patched blocks instead. Each patched module has a
    class of its own, so this touches nothing outside ``fmodel``."""
    for module in fmodel.modules():
        if isinstance(module, nn.ModuleList) and type(module) is not nn.ModuleList:
            type(module).__getitem__ = _slice_to_list


def higher_meta_gradient(problem: MetaProblem) -> MetaResult:
    """θ' = θ − η∇_θ L_in(θ, z_T(φ)) (unrolled), then ∇_φ L_quiz(θ') through the unrolled graph.

    The unrolled graph ends at the teacher's outputs (detached leaves); the teacher backward is a
    separate, ordinary backward, as in the other backends.
    """
    if problem.reduce is not None:
        raise ValueError("meta_grad='higher' cannot run data-parallel: it differentiates through the unrolled pilot "
                         "step, which an all-reduce of the pilot gradient would cut; use meta_grad='jvp' or "
                         "'finite_diff' over several processes")
    first: dict[str, object] = {}
    teacher = detached_outputs(problem.teacher_out)
    # higher hands the callback one gradient per parameter of the whole student (None for frozen
    # ones), in the order of ``student.parameters()``; θ may be a subset of them
    position = {id(p): i for i, p in enumerate(problem.student.parameters())}
    try:
        theta_at = [position[id(p)] for p in problem.params]
    except KeyError:
        raise ValueError("MetaProblem.params must be parameters of MetaProblem.student") from None

    def keep_first_grads(grads):
        if "grads" not in first:
            first["grads"] = [grads[i].detach().clone() if grads[i] is not None else torch.zeros_like(p)
                              for i, p in zip(theta_at, problem.params)]
        return grads

    optimizer = _pilot_optimizer(problem)
    # higher copies every attribute of each module, which trips Transformers' deprecation shims.
    with warnings.catch_warnings(action="ignore", category=FutureWarning), higher.innerloop_ctx(
        problem.student, optimizer, copy_initial_weights=True, track_higher_grads=True
    ) as (fstudent, diffopt):
        _allow_module_list_slices(fstudent)
        with problem.timer.phase("pilot"):
            for step in range(problem.unroll_steps):
                with problem.autocast():
                    out = fstudent(problem.batch)
                    inner = problem.objective.inner(out, teacher, problem.batch)
                if step == 0:
                    first["inner"] = float(inner.detach())
                    first["logits"] = out.logits.detach()  # the student at θ: the teacher objective's KL(p_S ‖ p_T)
                diffopt.step(inner, grad_callback=keep_first_grads)
        with problem.timer.phase("quiz"):
            with problem.autocast():
                quiz = problem.objective.quiz(fstudent(problem.quiz_batch), problem.quiz_batch)
        with problem.timer.phase("directional_derivative"):  # the backward through the unrolled pilot
            z_grads = list(torch.autograd.grad(quiz, output_tensors(teacher), allow_unused=True))
    phi_grads, terms = teacher_backward(problem, z_grads, first.get("logits"))
    return MetaResult(phi_grads, first["inner"], float(quiz.detach()), first["grads"], terms)
