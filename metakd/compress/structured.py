"""Structured pruning of transformer students: remove whole attention heads (KV groups under
grouped-query attention) and FFN neurons by an importance score, so the weight matrices really
shrink and parameter count and latency drop.

A pruning *plan* lists, per block, the head and neuron indices to KEEP; it is plain JSON, and
``apply_plan`` on a freshly built model of the same config rebuilds the pruned shapes so a saved
``state_dict`` loads into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from ..models import ModelError, find_layer_list

SUPPORTED = ("bert", "roberta", "gpt2", "llama", "mistral", "qwen2")
METHODS = ("taylor", "magnitude")
KINDS = ("heads", "neurons")

Plan = dict[int, dict[str, list[int]]]
Scores = dict[int, dict[str, torch.Tensor]]


# ---------------------------------------------------------------------------- unit layout per architecture
@dataclass(frozen=True)
class _Cut:
    """One weight touched by a unit: its output rows ("out", bias included) or its input columns
    ("in"); ``width`` entries per unit along that axis, repeated over ``chunks`` stacked parts
    (GPT-2's q|k|v in ``c_attn``)."""

    module: nn.Module
    side: str
    width: int
    chunks: int = 1


@dataclass(frozen=True)
class _Group:
    """The units of one kind (heads or neurons) in one block: their count, the weights they own,
    and the module attributes to set after pruning to ``k`` units."""

    count: int
    cuts: tuple[_Cut, ...]
    update: Callable[[int], None]


def _set_attrs(module: nn.Module, **values: int) -> None:
    for name, value in values.items():
        if hasattr(module, name):
            setattr(module, name, value)


def _bert_groups(block: nn.Module) -> dict[str, _Group]:
    att, out = block.attention.self, block.attention.output.dense
    hd = att.attention_head_size
    inter, down = block.intermediate.dense, block.output.dense
    return {
        "heads": _Group(att.query.out_features // hd,
                        (_Cut(att.query, "out", hd), _Cut(att.key, "out", hd), _Cut(att.value, "out", hd),
                         _Cut(out, "in", hd)),
                        lambda k: _set_attrs(att, num_attention_heads=k, all_head_size=k * hd)),
        "neurons": _Group(inter.out_features, (_Cut(inter, "out", 1), _Cut(down, "in", 1)), lambda k: None),
    }


def _gpt2_groups(block: nn.Module) -> dict[str, _Group]:
    att, mlp = block.attn, block.mlp
    hd = att.head_dim
    # embed_dim is the residual width (c_proj's output) and stays; split_size is q/k/v's width.
    return {
        "heads": _Group(att.split_size // hd, (_Cut(att.c_attn, "out", hd, chunks=3), _Cut(att.c_proj, "in", hd)),
                        lambda k: _set_attrs(att, split_size=k * hd, num_heads=k)),
        "neurons": _Group(mlp.c_fc.nf, (_Cut(mlp.c_fc, "out", 1), _Cut(mlp.c_proj, "in", 1)), lambda k: None),
    }


def _llama_groups(block: nn.Module) -> dict[str, _Group]:
    att, mlp = block.self_attn, block.mlp
    hd, rep = att.head_dim, att.num_key_value_groups
    # A unit is a KV head with its `rep` query heads (contiguous in q_proj, as repeat_kv expects).
    return {
        "heads": _Group(att.k_proj.out_features // hd,
                        (_Cut(att.q_proj, "out", hd * rep), _Cut(att.k_proj, "out", hd),
                         _Cut(att.v_proj, "out", hd), _Cut(att.o_proj, "in", hd * rep)),
                        lambda k: _set_attrs(att, num_heads=k * rep, num_key_value_heads=k)),
        "neurons": _Group(mlp.gate_proj.out_features,
                          (_Cut(mlp.gate_proj, "out", 1), _Cut(mlp.up_proj, "out", 1), _Cut(mlp.down_proj, "in", 1)),
                          lambda k: _set_attrs(mlp, intermediate_size=k)),
    }


_LAYOUTS = {"bert": _bert_groups, "roberta": _bert_groups, "gpt2": _gpt2_groups,
            "llama": _llama_groups, "mistral": _llama_groups, "qwen2": _llama_groups}


def _blocks(model: nn.Module) -> list[dict[str, _Group]]:
    """Every block's head and neuron groups; ModelError for unsupported models."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _LAYOUTS:
        raise ModelError(f"structured pruning supports Hugging Face models of type {', '.join(SUPPORTED)}; "
                         f"got {type(model).__name__} (model_type {model_type!r})")
    _, layers = find_layer_list(model)
    try:
        groups = [_LAYOUTS[model_type](block) for block in layers]
    except AttributeError as exc:
        raise ModelError(f"{type(model).__name__} does not have the {model_type} block layout that structured "
                         f"pruning expects ({exc}); use an unwrapped model of type {', '.join(SUPPORTED)}") from exc
    for block in groups:
        for group in block.values():
            for cut in group.cuts:
                _check_module(cut.module)
    return groups


def _check_module(module: nn.Module) -> None:
    if type(module) is not nn.Linear and type(module).__name__ != "Conv1D":
        raise ModelError(f"structured pruning needs plain nn.Linear/Conv1D layers, got {type(module).__name__} "
                         "(merge LoRA adapters and prune before quantizing)")
    if not module.weight.is_floating_point():
        raise ModelError("structured pruning needs floating-point weights; prune before quantizing")


def _weight_dim(cut: _Cut) -> int:
    out_dim = 0 if isinstance(cut.module, nn.Linear) else 1  # Conv1D stores weights as [in, out]
    return out_dim if cut.side == "out" else 1 - out_dim


def _tensors(cut: _Cut) -> list[tuple[torch.Tensor, int]]:
    """(parameter, unit axis) pairs of a cut: the weight, plus the bias for output rows."""
    pairs = [(cut.module.weight, _weight_dim(cut))]
    if cut.side == "out" and cut.module.bias is not None:
        pairs.append((cut.module.bias, 0))
    return pairs


def structure_of(model: nn.Module) -> dict[int, dict[str, int]]:
    """``{block: {"heads": n heads (KV groups), "neurons": n FFN neurons}}`` as the model is now."""
    return {i: {kind: g[kind].count for kind in KINDS} for i, g in enumerate(_blocks(model))}


# ---------------------------------------------------------------------------- importance
def _per_unit(values: torch.Tensor, dim: int, cut: _Cut, count: int) -> torch.Tensor:
    """Sum ``values`` (shaped like a parameter) into one number per unit along ``dim``."""
    per_index = values.float().movedim(dim, 0).reshape(values.shape[dim], -1).sum(dim=1)
    return per_index.reshape(cut.chunks, count, cut.width).sum(dim=(0, 2))


def _score(blocks: list[dict[str, _Group]], fn: Callable[[torch.Tensor], torch.Tensor]) -> Scores:
    scores: Scores = {}
    for i, block in enumerate(blocks):
        scores[i] = {}
        for kind, group in block.items():
            total = torch.zeros(group.count)
            for cut in group.cuts:
                for param, dim in _tensors(cut):
                    total += _per_unit(fn(param), dim, cut, group.count).cpu()
            scores[i][kind] = total
    return scores


def _accumulate_grads(model: nn.Module, params: list[nn.Parameter], batches: Iterable[Mapping],
                      loss_fn: Callable[[nn.Module, Mapping], torch.Tensor]) -> dict[nn.Parameter, torch.Tensor]:
    """Gradients of the summed losses w.r.t. ``params`` (via autograd.grad: ``.grad`` is untouched),
    in eval mode and with the model's modes and requires_grad flags restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    sums = {p: torch.zeros_like(p) for p in params}
    seen = 0
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                loss = loss_fn(model, batch)
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    raise ModelError("taylor importance needs loss_fn(model, batch) to return a scalar tensor")
                for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
                    if g is not None:
                        sums[p] += g
                seen += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in flags.items():
            p.requires_grad_(flag)
    if not seen:
        raise ModelError("taylor importance needs at least one batch")
    return sums


def head_neuron_importance(model: nn.Module, batches: Iterable[Mapping] | None,
                           loss_fn: Callable[[nn.Module, Mapping], torch.Tensor] | None,
                           method: str = "taylor") -> Scores:
    """``{block: {"heads": [n_heads], "neurons": [n_neurons]}}`` float32 CPU scores.

    A unit's weights are its q/k/v rows (+ biases) and attention-output columns (a head or KV group)
    or its FFN-in rows (+ gate rows, + biases) and FFN-out columns (a neuron). ``"taylor"`` sums
    ``|w * dL/dw|`` over them, with gradients of ``loss_fn(model, batch)`` accumulated over all
    ``batches`` in eval mode; ``"magnitude"`` is their L2 norm (no data needed).
    """
    if method not in METHODS:
        raise ModelError(f"unknown importance method {method!r}; use one of {', '.join(METHODS)}")
    blocks = _blocks(model)
    if method == "magnitude":
        with torch.no_grad():
            squares = _score(blocks, lambda p: p.detach().float() ** 2)
        return {i: {k: v.sqrt() for k, v in s.items()} for i, s in squares.items()}
    if batches is None or loss_fn is None:
        raise ModelError("taylor importance needs batches and a loss_fn(model, batch); "
                         "use method='magnitude' to score without data")
    params = list({id(p): p for b in blocks for g in b.values() for c in g.cuts for p, _ in _tensors(c)}.values())
    grads = _accumulate_grads(model, params, batches, loss_fn)
    with torch.no_grad():
        return _score(blocks, lambda p: (p.detach() * grads[p]).abs())


# ---------------------------------------------------------------------------- planning
def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelError(f"structured pruning fraction {name}={value!r} must be a number in [0, 1)")
    return float(value)


def _keep(scores: torch.Tensor, fraction: float) -> list[int]:
    """Indices of the highest scores after removing round(fraction * n) (at most n - 1); ties keep
    the lower index."""
    values = [float(s) for s in torch.as_tensor(scores).flatten()]
    if not values or any(v != v for v in values):
        raise ModelError("importance scores must be non-empty and free of NaN")
    n_remove = min(round(fraction * len(values)), len(values) - 1)
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:len(values) - n_remove])


def plan_pruning(scores: Mapping[int, Mapping[str, torch.Tensor]], heads: float = 0.0, neurons: float = 0.0) -> Plan:
    """Per block, keep all but the round(fraction * n) lowest-scoring heads and neurons (never
    fewer than one). Returns ``{block: {"heads": kept, "neurons": kept}}``."""
    fractions = {"heads": _check_fraction("heads", heads), "neurons": _check_fraction("neurons", neurons)}
    plan: Plan = {}
    for block, per_kind in scores.items():
        missing = [k for k in KINDS if k not in per_kind]
        if missing:
            raise ModelError(f"scores of block {block} lack {missing}; expected keys {list(KINDS)}")
        plan[int(block)] = {kind: _keep(per_kind[kind], fractions[kind]) for kind in KINDS}
    return plan


# ---------------------------------------------------------------------------- applying a plan
def _unit_index(cut: _Cut, kept: list[int], count: int, device: torch.device) -> torch.Tensor:
    """Positions along a cut's unit axis that belong to the kept units."""
    units = torch.tensor(kept, device=device)
    within = (units[:, None] * cut.width + torch.arange(cut.width, device=device)).flatten()
    return torch.cat([within + c * count * cut.width for c in range(cut.chunks)])


def _slice_cut(cut: _Cut, kept: list[int], count: int) -> None:
    module = cut.module
    for param, dim in _tensors(cut):
        index = _unit_index(cut, kept, count, param.device)
        data = param.detach().index_select(dim, index).clone()
        name = "weight" if param is module.weight else "bias"
        setattr(module, name, nn.Parameter(data, requires_grad=param.requires_grad))
    size = len(kept) * cut.width * cut.chunks
    if isinstance(module, nn.Linear):
        _set_attrs(module, **{"out_features" if cut.side == "out" else "in_features": size})
    else:
        _set_attrs(module, **{"nf" if cut.side == "out" else "nx": size})


def _check_kept(where: str, kept: object, count: int) -> list[int]:
    if not isinstance(kept, (list, tuple)) or not kept:
        raise ModelError(f"{where}: kept indices must be a non-empty list (keep at least one), got {kept!r}")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in kept):
        raise ModelError(f"{where}: kept indices must be integers, got {kept!r}")
    if list(kept) != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= count:
        raise ModelError(f"{where}: kept indices must be sorted, unique and in [0, {count}), got {list(kept)}")
    return list(kept)


def _block_index(key: object, n_blocks: int) -> int:
    if isinstance(key, str) and key.isdigit():
        key = int(key)  # a plan read back from JSON has string keys
    if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < n_blocks:
        raise ModelError(f"plan block {key!r} must be an index in [0, {n_blocks})")
    return key


def apply_plan(model: nn.Module, plan: Mapping[int, Mapping[str, list[int]]]) -> nn.Module:
    """Shrink each planned block in place to its kept heads/neurons (indices of the model's current
    units) and update the module attributes its forward uses; returns ``model``.

    Everything is validated before anything is cut, so a bad plan leaves the model untouched.
    """
    blocks = _blocks(model)
    work: list[tuple[_Group, list[int]]] = []
    for key, entry in plan.items():
        i = _block_index(key, len(blocks))
        unknown = [k for k in entry if k not in KINDS]
        if unknown:
            raise ModelError(f"plan block {i} has unknown keys {unknown}; use {list(KINDS)}")
        for kind, kept in entry.items():
            group = blocks[i][kind]
            work.append((group, _check_kept(f"plan block {i} {kind}", kept, group.count)))
    with torch.no_grad():
        for group, kept in work:
            if kept == list(range(group.count)):
                continue
            for cut in group.cuts:
                _slice_cut(cut, kept, group.count)
            group.update(len(kept))
    return model


def prune_structured(model: nn.Module, heads: float = 0.0, neurons: float = 0.0,
                     batches: Iterable[Mapping] | None = None,
                     loss_fn: Callable[[nn.Module, Mapping], torch.Tensor] | None = None,
                     method: str = "taylor") -> Plan:
    """Score heads and neurons, remove the given fraction of each in every block (in place), and
    return the JSON-serialisable plan that ``apply_plan`` replays on a fresh model."""
    fractions = (_check_fraction("heads", heads), _check_fraction("neurons", neurons))
    scores = head_neuron_importance(model, batches, loss_fn, method)
    plan = plan_pruning(scores, *fractions)
    apply_plan(model, plan)
    return plan
