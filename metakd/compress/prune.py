"""Unstructured magnitude pruning of a student's Linear weights, made permanent: the smallest
|w| are set to zero in place (no masks or reparametrisation left on the model). The masks it
returns keep the zeros in place while a recovery distillation trains the pruned model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import ModelError, find_layer_list
from .quantize import quantizable_weights

SCOPES = ("global", "layer")
HEADS = ("classifier", "score", "lm_head", "pooler", "head")


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{parameter name: weight}`` of the Linear (and GPT-2 Conv1D) layers inside the transformer
    blocks. Embeddings, norms, biases, the pooler and the output head are left out: they are a
    small part of the weights, and their magnitudes are on another scale (a global ranking would
    strip BERT's pooler first, for instance)."""
    try:
        blocks, _ = find_layer_list(model)
    except ModelError:
        blocks = None
    out = {}
    for name, module, _ in quantizable_weights(model):
        inside = name.startswith(f"{blocks}.") if blocks else not any(h in name.split(".") for h in HEADS)
        if inside:
            out[f"{name}.weight"] = module.weight
    return out


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean mask of exactly ``k`` smallest entries (ties broken by position)."""
    drop = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        # a stable sort breaks ties by index, so the count is exact and deterministic
        order = torch.sort(scores.reshape(-1), stable=True).indices
        drop[order[:k]] = True
    return drop.reshape(scores.shape)


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Zero the fraction ``sparsity`` of the prunable weights (``prunable_weights``: the blocks'
    Linear layers) with the smallest magnitude, in place.

    ``scope="global"``: one ranking over all of them (layers that matter less lose more);
    ``"layer"``: the same fraction in every weight. Returns ``{parameter name: keep mask}``
    (True = kept). Exactly ``round(sparsity * n)`` weights are zeroed (per weight for "layer").
    """
    if scope not in SCOPES:
        raise ModelError(f"pruning scope must be one of {SCOPES}, got {scope!r}")
    if not (isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool) and 0.0 <= sparsity < 1.0):
        raise ModelError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")
    weights = prunable_weights(model)
    if not weights:
        raise ModelError(f"{type(model).__name__} has no Linear weights to prune")
    if scope == "layer":
        masks = {name: ~_smallest(w.detach().abs(), round(sparsity * w.numel())) for name, w in weights.items()}
    else:
        flat = torch.cat([w.detach().abs().reshape(-1).float().cpu() for w in weights.values()])
        keep = ~_smallest(flat, round(sparsity * flat.numel()))
        masks, start = {}, 0
        for name, w in weights.items():
            masks[name] = keep[start:start + w.numel()].reshape(w.shape).to(w.device)
            start += w.numel()
    apply_masks(model, masks)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Set the weights where a mask is False to zero (in place)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise ModelError(f"pruning mask for {name!r}, which the model does not have")
        params[name].mul_(mask.to(params[name].device, params[name].dtype))


def keep_pruned(optimizer: torch.optim.Optimizer, model: nn.Module, masks: dict[str, torch.Tensor]) -> Any:
    """Re-apply ``masks`` after every ``optimizer.step()`` so training (e.g. a recovery
    distillation, weight decay included) never revives a pruned weight; returns the hook handle
    (``handle.remove()`` stops it)."""
    return optimizer.register_step_post_hook(lambda *_: apply_masks(model, masks))


def sparsity(model: nn.Module) -> float:
    """Fraction of the prunable weights that are exactly zero."""
    weights = list(prunable_weights(model).values())
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameters of the whole model."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())
