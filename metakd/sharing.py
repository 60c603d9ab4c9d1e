"""A copy of a model's module structure that shares its weights: what MetaDistiller wraps,
trains and moves instead of the caller's teacher, at no extra weight memory."""

from __future__ import annotations

import copy

import torch
from torch import nn


def structural_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``'s modules, configs and attributes whose parameters and buffers
    share storage with the original's.

    Every plain ``nn.Parameter`` becomes a new Parameter object over the same storage, so
    ``requires_grad`` flags, ``.to(device)`` and modules that peft injects (LoRA adapters) stay on
    the copy; an in-place change of a weight's values (``meta_update="full"``) shows in both.
    Parameter subclasses (bitsandbytes' quantized weights) and buffers are shared as they are.
    Other tensors a module holds, directly or one object down (bitsandbytes' ``state.CB``), are
    shared too; tensors that only hooks hold (accelerate's offload maps) are copied.
    """
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.data, requires_grad=p.requires_grad) if type(p) is nn.Parameter else p
    for module in model.modules():
        for value in vars(module).values():
            for t in [value, *(vars(value).values() if _plain_object(value) else ())]:
                if isinstance(t, torch.Tensor):
                    memo.setdefault(id(t), t)
        for b in module._buffers.values():
            if b is not None:
                memo.setdefault(id(b), b)
    return copy.deepcopy(model, memo)


def _plain_object(value: object) -> bool:
    return hasattr(value, "__dict__") and not isinstance(value, (nn.Module, torch.Tensor, type))


__all__ = ["structural_copy"]
