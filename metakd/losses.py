"""Distillation losses: pure functions of tensors, no state, no files.

Every function keeps the autograd graph of *both* inputs: the teacher's outputs are not
detached, because the meta-gradient flows through them into the teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    t = float(temperature)
    return F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1)


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(z_T/T) || softmax(z_S/T))``, summed over classes, mean over rows.

    Logits are ``[..., C]``; every leading position counts as one row.
    """
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl.mean() * (float(temperature) ** 2)


def kd_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(z_S/T) || softmax(z_T/T))`` (mode-seeking), mean over rows."""
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    kl = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
    return kl.mean() * (float(temperature) ** 2)


def kd_jsd(student_logits: Tensor, teacher_logits: Tensor, temperature: float, beta: float = 0.5) -> Tensor:
    """``T^2 * JSD_β``, the generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024):
    ``β KL(p_T || m) + (1-β) KL(p_S || m)`` with ``m = β p_T + (1-β) p_S``; mean over rows.
    β = 0.5 is the symmetric JSD (at most ln 2 per row before the T² factor)."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be in (0, 1), got {beta!r}")
    log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
    log_m = torch.logsumexp(torch.stack([log_p_t + math.log(beta), log_p_s + math.log1p(-beta)]), dim=0)
    p_t, p_s = log_p_t.exp(), log_p_s.exp()
    jsd = beta * (p_t * (log_p_t - log_m)).sum(-1) + (1.0 - beta) * (p_s * (log_p_s - log_m)).sum(-1)
    return jsd.mean() * (float(temperature) ** 2)


def kd_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
                  divergence: str = "forward_kl", beta: float = 0.5) -> Tensor:
    """The soft term by name: ``forward_kl`` (default), ``reverse_kl`` or ``jsd`` (with ``beta``)."""
    if divergence == "forward_kl":
        return kd_kl(student_logits, teacher_logits, temperature)
    if divergence == "reverse_kl":
        return kd_reverse_kl(student_logits, teacher_logits, temperature)
    if divergence == "jsd":
        return kd_jsd(student_logits, teacher_logits, temperature, beta)
    raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")


def hard_ce(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of the student's logits against integer labels."""
    return F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1))


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float,
    alpha: float,
    divergence: str = "forward_kl",
    beta: float = 0.5,
) -> Tensor:
    """``alpha * soft + (1 - alpha) * hard_ce`` with the soft term ``kd_divergence``; a zero weight
    skips its term entirely."""
    loss = student_logits.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * kd_divergence(student_logits, teacher_logits, temperature, divergence, beta)
    if alpha < 1:
        loss = loss + (1.0 - alpha) * hard_ce(student_logits, labels)
    return loss


def feature_mse(student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between hidden states ``[B, L, H]`` (or ``[B, H]``).

    With ``mask`` (``[B, L]``, 1 = real token) only real tokens count: the squared error is
    averaged over the hidden dimension and then over masked positions.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states differ in shape: {tuple(student_hidden.shape)} vs {tuple(teacher_hidden.shape)}"
            " (add a projection or map layers of equal width)"
        )
    err = (student_hidden - teacher_hidden).pow(2).mean(-1)
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def masked_mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average ``[B, L, H]`` hidden states over real tokens → ``[B, H]``."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
