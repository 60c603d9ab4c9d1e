"""The student side of the objective: the student plus its feature projections (θ), and the
inner (distillation) and quiz losses as the config defines them."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from . import losses
from .forward import Outputs, blocks_path, model_inputs, run, shares_inputs
from .precision import upcast


class DistillStudent(nn.Module):
    """Wraps the student model with the linear projections that map its hidden states to the
    teacher's width for feature distillation. Every trainable parameter here is part of θ, the
    parameters the pilot step updates."""

    def __init__(self, model: nn.Module, feature_layers: Mapping[int, int] | None,
                 teacher_widths: Mapping[int, int] | None = None, student_widths: Mapping[int, int] | None = None):
        super().__init__()
        self.model = model
        self.feature_layers = dict(feature_layers or {})
        self.blocks_path = blocks_path(model) if self.feature_layers else None
        self.projections = nn.ModuleDict()
        for s_layer, t_layer in self.feature_layers.items():
            s_width = (student_widths or {}).get(s_layer)
            t_width = (teacher_widths or {}).get(t_layer)
            if s_width is not None and t_width is not None and s_width != t_width:
                proj = nn.Linear(s_width, t_width, bias=False)
                proj.to(dtype=next(model.parameters()).dtype, device=next(model.parameters()).device)
                self.projections[str(s_layer)] = proj

    def forward(self, batch: Mapping[str, Any]) -> Outputs:
        out = run(self.model, model_inputs(batch, "student"), self.blocks_path, set(self.feature_layers))
        for key, proj in self.projections.items():
            out.hidden[int(key)] = proj(out.hidden[int(key)])
        return out


class Objective:
    """Inner loss ``alpha·T²·D + (1−alpha)·CE + feature_weight·L_feat`` (D: forward KL, reverse KL
    or generalized JSD) and quiz loss ``CE`` (or the multi-class hinge, ``quiz_loss="margin"``).

    ``task="causal_lm"``: D and CE are token-level over real (non-padding) positions, CE on the
    next token, computed ``lm_chunk_size`` positions at a time (``losses.token_kd_loss``);
    ``vocab_size`` (when set) keeps only the first ``vocab_size`` logits of both models — the
    shared vocabulary when their output layers differ in size.
    """

    def __init__(self, temperature: float, alpha: float, feature_layers: Mapping[int, int] | None,
                 feature_weight: float, divergence: str = "forward_kl", jsd_beta: float = 0.5,
                 task: str = "classification", lm_chunk_size: int | None = 1024, vocab_size: int | None = None,
                 quiz_loss: str = "ce"):
        self.task = task
        self.quiz_loss = quiz_loss
        self.lm_chunk_size = lm_chunk_size
        self.vocab_size = vocab_size
        self.temperature = temperature
        self.alpha = alpha
        self.divergence = divergence
        self.jsd_beta = jsd_beta
        self.feature_layers = dict(feature_layers or {})
        self.feature_weight = feature_weight if self.feature_layers else 0.0

    def _logits(self, out: Outputs) -> Tensor:
        """The logits the losses read, in float32 when the model ran in half precision."""
        logits = upcast(out.logits)
        return logits if self.vocab_size is None else logits[..., : self.vocab_size]

    def inner(self, student: Outputs, teacher: Outputs, batch: Mapping[str, Any]) -> Tensor:
        if self.task == "causal_lm":
            loss = losses.token_kd_loss(self._logits(student), self._logits(teacher), batch["labels"],
                                        self.temperature, self.alpha, self.divergence, self.jsd_beta,
                                        mask=model_inputs(batch, "student").get("attention_mask"),
                                        chunk_size=self.lm_chunk_size)
        else:
            loss = losses.kd_loss(self._logits(student), self._logits(teacher), batch["labels"], self.temperature, self.alpha,
                                  self.divergence, self.jsd_beta)
        if self.feature_weight > 0:
            loss = loss + self.feature_weight * self.feature(student, teacher, batch)
        return loss

    def feature(self, student: Outputs, teacher: Outputs, batch: Mapping[str, Any]) -> Tensor:
        """Mean over mapped layers of the hidden-state MSE: token-level when teacher and student
        read the same tokens, on mask-averaged (pooled) states when they tokenize differently."""
        shared = shares_inputs(batch)
        terms = []
        for s_layer, t_layer in self.feature_layers.items():
            hs, ht = upcast(student.hidden[s_layer]), upcast(teacher.hidden[t_layer])
            s_mask = model_inputs(batch, "student").get("attention_mask")
            t_mask = model_inputs(batch, "teacher").get("attention_mask")
            if shared:
                terms.append(losses.feature_mse(hs, ht, s_mask))
            else:
                hs = losses.masked_mean_pool(hs, s_mask if s_mask is not None else torch.ones(hs.shape[:2]))
                ht = losses.masked_mean_pool(ht, t_mask if t_mask is not None else torch.ones(ht.shape[:2]))
                terms.append(losses.feature_mse(hs, ht))
        return torch.stack(terms).mean()

    def quiz(self, student: Outputs, batch: Mapping[str, Any]) -> Tensor:
        """Hard-label CE of the student on the quiz batch (next-token CE for a causal LM), or with
        ``quiz_loss="margin"`` the multi-class hinge loss."""
        if self.task == "causal_lm":
            return losses.next_token_ce(upcast(student.logits), batch["labels"], self.lm_chunk_size)
        if self.quiz_loss == "margin":
            return losses.hard_margin(upcast(student.logits), batch["labels"])
        return losses.hard_ce(upcast(student.logits), batch["labels"])
