"""Meta-gradient backends: the gradient of the quiz loss after a differentiable pilot student
step with respect to the teacher's meta parameters φ. One signature, chosen by name."""

from __future__ import annotations

from typing import Callable

from .base import MetaProblem, MetaResult
from .finite_diff_backend import finite_diff_meta_gradient
from .jvp_backend import jvp_meta_gradient


def higher_meta_gradient(problem: MetaProblem) -> MetaResult:
    """The ``higher`` backend, imported on first use: ``higher`` is loaded only when asked for."""
    from .higher_backend import higher_meta_gradient as backend

    return backend(problem)


BACKENDS: dict[str, Callable[[MetaProblem], MetaResult]] = {
    "higher": higher_meta_gradient,
    "jvp": jvp_meta_gradient,
    "finite_diff": finite_diff_meta_gradient,
}


def meta_gradient(backend: str, problem: MetaProblem) -> MetaResult:
    """Compute ``∇_φ L_quiz(θ')`` with the named backend."""
    try:
        fn = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown meta_grad backend {backend!r}; available: {', '.join(BACKENDS)}") from None
    return fn(problem)


__all__ = ["BACKENDS", "MetaProblem", "MetaResult", "meta_gradient"]
