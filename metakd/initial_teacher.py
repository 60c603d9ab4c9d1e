"""The teacher as it was given (p_T0 of the anchor term ``KL(p_T0 ‖ p_T)``): φ at its initial values,
swapped in for a no-grad forward, with a classifier's logits kept per training example.

The initial teacher never changes, so a classifier's logits on an example are computed once: a
meta-step whose batch holds an example not seen before runs the forward on the batch and keeps every
row's logits (a few floats per example); from then on (the second epoch on) the anchor costs nothing
but a lookup. The kept logits go into checkpoints, so a resumed run reads the same values an
uninterrupted one does. Causal-LM logits (``[L, V]`` per example) are computed at every meta-step.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn


def row_keys(inputs: Mapping[str, Tensor]) -> list[int]:
    """One 63-bit key per row of a teacher batch: a hash of its real (unpadded) token ids."""
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    keys = []
    for i in range(ids.shape[0]):
        row = ids[i] if mask is None else ids[i][mask[i].bool()]
        digest = hashlib.blake2b(row.detach().cpu().numpy().tobytes(), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "little") >> 1)
    return keys


class InitialTeacher:
    """Owned by ``MetaDistiller`` (``d.initial_teacher``) when ``teacher_anchor_weight`` > 0."""

    def __init__(self, teacher: nn.Module, cache: bool):
        self.phi = {n: p.detach().clone() for n, p in teacher.named_parameters() if p.requires_grad}
        self.cache_rows = cache
        self.kept: dict[int, Tensor] = {}
        self.forwards = 0
        """Forwards run (each one on a batch with an example not kept yet)."""

    def logits(self, inputs: Mapping[str, Tensor], forward: Callable[[dict[str, Tensor]], Tensor]) -> Tensor:
        """The initial teacher's logits on ``inputs``; ``forward(phi)`` runs the teacher with those values of φ."""
        if not self.cache_rows:
            self.forwards += 1
            return forward(self.phi)
        keys = row_keys(inputs)
        if any(k not in self.kept for k in keys):
            self.forwards += 1
            out = forward(self.phi).detach()
            for k, row in zip(keys, out):
                self.kept.setdefault(k, row.clone())
        return torch.stack([self.kept[k] for k in keys])

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Tensor]:
        if not self.kept:
            return {}
        keys = list(self.kept)
        return {"initial_teacher.keys": torch.tensor(keys, dtype=torch.int64),
                "initial_teacher.logits": torch.stack([self.kept[k] for k in keys]).cpu().contiguous()}

    def load(self, tensors: Mapping[str, Tensor], device: Any = None) -> None:
        self.kept = {}
        if "initial_teacher.keys" in tensors:
            for k, row in zip(tensors["initial_teacher.keys"].tolist(), tensors["initial_teacher.logits"]):
                self.kept[int(k)] = row.to(device) if device is not None else row


__all__ = ["InitialTeacher", "row_keys"]
