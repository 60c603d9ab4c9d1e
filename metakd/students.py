"""The structure of a model: its list of transformer blocks, students derived from a teacher's
blocks or config, eager attention."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .model_errors import ModelError


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` of transformer blocks (the longest list of same-class modules)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise ModelError(f"{type(model).__name__} has no list of transformer blocks (nn.ModuleList)")
    return best


def select_layers(n_teacher: int, strategy: str) -> list[int]:
    """Teacher block indices for a student: ``"alternate"`` keeps every other block (0, 2, 4, ...:
    DistilBERT's initialisation), ``"first:k"`` the first k, ``"last:k"`` the last k."""
    kind, _, count = strategy.partition(":")
    if kind == "alternate" and not count:
        return list(range(0, n_teacher, 2))
    if kind in ("first", "last") and count.isdigit() and 0 < int(count) <= n_teacher:
        k = int(count)
        return list(range(k)) if kind == "first" else list(range(n_teacher - k, n_teacher))
    raise ModelError(f"student layer strategy {strategy!r} must be 'alternate', 'first:k' or 'last:k' "
                     f"with 1 <= k <= {n_teacher} (the teacher's blocks)")


def student_from_teacher(teacher: nn.Module, layers: list[int] | str) -> nn.Module:
    """A student that copies the teacher but keeps only the blocks at ``layers``: indices
    (e.g. ``[0, 5]``: first and last of six) or a strategy of ``select_layers``
    (``"alternate"``, ``"first:k"``, ``"last:k"``)."""
    from .quantization import is_quantized

    if is_quantized(teacher):
        raise ModelError("cannot derive a student from a quantized teacher (its 4/8-bit weights cannot train): "
                         "derive it from the full-precision teacher, or load the student by hub id or directory")
    student = copy.deepcopy(_unwrap_peft(teacher))
    name, blocks = find_layer_list(student)
    if isinstance(layers, str):
        layers = select_layers(len(blocks), layers)
    if not layers or any(i < 0 or i >= len(blocks) for i in layers):
        raise ModelError(f"student layers {layers} must index the teacher's {len(blocks)} blocks")
    kept = nn.ModuleList([blocks[i] for i in layers])
    parent_name, _, attr = name.rpartition(".")
    setattr(student.get_submodule(parent_name) if parent_name else student, attr, kept)
    config = getattr(student, "config", None)
    if config is not None:
        config.num_hidden_layers = len(layers)
        for i, block in enumerate(kept):  # keep cache/attention indices consistent
            for sub in block.modules():
                if hasattr(sub, "layer_idx"):
                    sub.layer_idx = i
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def random_student(teacher: nn.Module, seed: int = 0, **config_changes: Any) -> nn.Module:
    """A randomly initialised student of the teacher's architecture with a changed config, e.g.
    ``random_student(teacher, num_hidden_layers=2, hidden_size=192, intermediate_size=768)``
    (narrower than the teacher; feature distillation then learns projections). Names follow the
    model's config class (``n_layer``/``n_embd`` for GPT-2)."""
    base = _unwrap_peft(teacher)
    config = copy.deepcopy(getattr(base, "config", None))
    if config is None:
        raise ModelError(f"{type(base).__name__} has no config to derive a student from")
    unknown = [k for k in config_changes if not hasattr(config, k)]
    if unknown:
        raise ModelError(f"{type(config).__name__} has no field(s) {unknown}")
    for key, value in config_changes.items():
        setattr(config, key, value)
    heads = getattr(config, "num_attention_heads", None)
    width = getattr(config, "hidden_size", None)
    if heads and width and width % heads:
        raise ModelError(f"hidden_size {width} is not a multiple of num_attention_heads {heads}")
    torch.manual_seed(seed)
    return type(base)(config)


def use_eager_attention(model: nn.Module) -> None:
    """Switch a Hugging Face model to eager attention: fused SDPA/flash kernels have no double
    backward, which the ``higher`` pilot step needs."""
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        try:
            setter("eager")
            return
        except Exception:  # noqa: BLE001 - fall back to the config flag below
            pass
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = "eager"


def _unwrap_peft(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
