"""Distillation losses: pure functions of tensors, no state, no files.

Every function keeps the autograd graph of *both* inputs: the teacher's outputs are not
detached, because the meta-gradient flows through them into the teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "mse")


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
    return _divergence_rows(student_logits, teacher_logits, temperature, "forward_kl", 0.5).mean() * (
        float(temperature) ** 2)


def kd_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(z_S/T) || softmax(z_T/T))`` (mode-seeking), mean over rows."""
    return _divergence_rows(student_logits, teacher_logits, temperature, "reverse_kl", 0.5).mean() * (
        float(temperature) ** 2)


def kd_jsd(student_logits: Tensor, teacher_logits: Tensor, temperature: float, beta: float = 0.5) -> Tensor:
    """``T^2 * JSD_β``, the generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024):
    ``β KL(p_T || m) + (1-β) KL(p_S || m)`` with ``m = β p_T + (1-β) p_S``; mean over rows.
    β = 0.5 is the symmetric JSD (at most ln 2 per row before the T² factor)."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must be in (0, 1), got {beta!r}")
    return _divergence_rows(student_logits, teacher_logits, temperature, "jsd", beta).mean() * (
        float(temperature) ** 2)


def kd_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
                  divergence: str = "forward_kl", beta: float = 0.5) -> Tensor:
    """The soft term by name: ``forward_kl`` (default), ``reverse_kl`` or ``jsd`` (with ``beta``)."""
    if divergence == "forward_kl":
        return kd_kl(student_logits, teacher_logits, temperature)
    if divergence == "reverse_kl":
        return kd_reverse_kl(student_logits, teacher_logits, temperature)
    if divergence == "jsd":
        return kd_jsd(student_logits, teacher_logits, temperature, beta)
    if divergence == "mse":
        return _divergence_rows(student_logits, teacher_logits, temperature, "mse", beta).mean() * (
            float(temperature) ** 2)
    raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")


def hard_ce(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of the student's logits against integer labels."""
    return F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1))


def hard_margin(student_logits: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """Mean multi-class hinge loss (``F.multi_margin_loss``): zero once the right class leads every
    other by ``margin``, so it rewards ranking the right class first, not confidence."""
    return F.multi_margin_loss(student_logits.reshape(-1, student_logits.shape[-1]), labels.reshape(-1),
                               margin=margin)


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


def token_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float,
    alpha: float,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    mask: Tensor | None = None,
    chunk_size: int | None = 1024,
) -> Tensor:
    """Token-level distillation loss of a causal LM: ``alpha * soft + (1 - alpha) * next-token CE``.

    Logits are ``[B, L, V]``. The soft term (``kd_divergence`` per position, times T²) averages
    over the positions where ``mask`` (``[B, L]``, 1 = real token; None: all) is set; the hard
    term is the mean cross-entropy of position t against ``labels[:, t + 1]`` (-100 = ignored).
    Positions are processed ``chunk_size`` at a time (views from one ``torch.split``), each chunk under
    activation checkpointing when a gradient is needed, so the loss keeps no ``[B·L, V]`` intermediates
    for the backward: beyond the two logits tensors it holds ``chunk_size × V`` values at a time, and the
    backward writes the chunks' gradients into one ``[B·L, V]`` gradient per logits tensor. None: one chunk.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)} (token-level distillation needs a shared vocabulary)"
        )
    if student_logits.dim() != 3 or labels.shape != student_logits.shape[:2]:
        raise ValueError(f"token_kd_loss takes [B, L, V] logits and [B, L] labels; got "
                         f"{tuple(student_logits.shape)} and {tuple(labels.shape)}")
    vocab = student_logits.shape[-1]
    s_flat, t_flat = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1).reshape(-1)
    weights = (mask.reshape(-1) if mask is not None else torch.ones_like(targets)).to(s_flat.dtype)
    n_soft = weights.sum().clamp_min(1.0)
    n_hard = (targets != -100).sum().clamp_min(1)
    soft_w, hard_w = float(alpha), 1.0 - float(alpha)
    t2 = float(temperature) ** 2

    def chunk_loss(s: Tensor, t: Tensor, w: Tensor, y: Tensor) -> Tensor:
        total = s.new_zeros(())
        if soft_w > 0:
            rows = _divergence_rows(s, t, temperature, divergence, beta)
            total = total + soft_w * t2 * (rows * w).sum() / n_soft
        if hard_w > 0:
            total = total + hard_w * F.cross_entropy(s, y, ignore_index=-100, reduction="sum") / n_hard
        return total

    step = s_flat.shape[0] if not chunk_size else int(chunk_size)
    needs_grad = torch.is_grad_enabled() and (s_flat.requires_grad or t_flat.requires_grad)
    loss = s_flat.new_zeros(())
    # one torch.split per tensor: a single SplitBackward gathers the chunks' gradients into one [B·L, V]
    # tensor, where slicing (s_flat[a:b]) would allocate a zero-filled [B·L, V] gradient for every chunk
    for piece in zip(*(x.split(step) for x in (s_flat, t_flat, weights, targets))):
        if needs_grad and step < s_flat.shape[0]:
            loss = loss + checkpoint(chunk_loss, *piece, use_reentrant=False)
        else:
            loss = loss + chunk_loss(*piece)
    return loss


def _divergence_rows(s: Tensor, t: Tensor, temperature: float, divergence: str, beta: float) -> Tensor:
    """Per-row soft divergence without the T² factor (rows of ``[N, V]`` logits)."""
    log_p_s, log_p_t = _log_probs(s, t, temperature)
    if divergence == "forward_kl":
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    if divergence == "reverse_kl":
        return (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
    if divergence == "jsd":
        log_m = torch.logsumexp(torch.stack([log_p_t + math.log(beta), log_p_s + math.log1p(-beta)]), dim=0)
        return (beta * (log_p_t.exp() * (log_p_t - log_m)).sum(-1)
                + (1.0 - beta) * (log_p_s.exp() * (log_p_s - log_m)).sum(-1))
    if divergence == "mse":  # MetaDistil's soft loss: torch's MSELoss on the softened probabilities
        return (log_p_s.exp() - log_p_t.exp()).pow(2).mean(-1)
    raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")


def divergence_rows(s: Tensor, t: Tensor, temperature: float, divergence: str = "forward_kl",
                    beta: float = 0.5) -> Tensor:
    """Per-row soft divergence of ``[N, V]`` student logits ``s`` from teacher logits ``t``, without
    the T² factor (``forward_kl``: KL(softmax(t/T) ‖ softmax(s/T)))."""
    return _divergence_rows(s, t, temperature, divergence, beta)


def next_token_ce(logits: Tensor, labels: Tensor, chunk_size: int | None = 1024) -> Tensor:
    """Mean next-token cross-entropy of ``[B, L, V]`` logits against ``[B, L]`` labels (position t
    predicts ``labels[:, t + 1]``; -100 ignored): the quiz loss and perplexity of a causal LM."""
    return token_kd_loss(logits, logits.detach(), labels, 1.0, 0.0, chunk_size=chunk_size)


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
