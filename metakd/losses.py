"""Distillation losses: pure functions of tensors, no state, no files.

Every function keeps the autograd graph of *both* inputs: the teacher's outputs are not
detached, because the meta-gradient flows through them into the teacher.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(z_T/T) || softmax(z_S/T))``, summed over classes, mean over rows.

    Logits are ``[..., C]``; every leading position counts as one row.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl.mean() * (t * t)


def hard_ce(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of the student's logits against integer labels."""
    return F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1))


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float,
    alpha: float,
) -> Tensor:
    """``alpha * kd_kl + (1 - alpha) * hard_ce``; a zero weight skips its term entirely."""
    loss = student_logits.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * kd_kl(student_logits, teacher_logits, temperature)
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
