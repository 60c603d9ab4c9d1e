"""LoRA adapters on the teacher and the student, and the teacher parameters a meta mode trains."""

from __future__ import annotations

import warnings
from typing import Iterator

from torch import nn

from .model_errors import ModelError
from .students import find_layer_list

LORA_MARKER = "lora_"


def has_lora(model: nn.Module) -> bool:
    return any(LORA_MARKER in n for n, _ in model.named_parameters())


def default_lora_targets(model: nn.Module) -> list[str]:
    """peft's per-architecture defaults; otherwise every Linear except the output head."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in table:
        return list(table[model_type])
    head_words = ("classifier", "score", "lm_head", "head")
    names = sorted({
        n.rsplit(".", 1)[-1] for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any(w in n for w in head_words)
    })
    if not names:
        raise ModelError(
            f"cannot pick LoRA target modules for {type(model).__name__}: set lora_target_modules"
        )
    return names


def attach_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | None,
                modules_to_save: list[str] | None = None, layers: list[int] | None = None):
    """Wrap ``model`` with fresh LoRA adapters (peft); only the adapters (and ``modules_to_save``,
    trainable copies that peft saves with the adapters) are trainable. ``layers``: put adapters
    only into these transformer blocks (peft's ``layers_to_transform``); None: every block.

    No task type is set, so peft adds no trainable copy of the classifier head unless asked: the
    teacher's meta-update reaches the adapters and nothing else.
    """
    from peft import LoraConfig, get_peft_model

    targets = target_modules or default_lora_targets(model)
    # GPT-2 style Conv1D layers store weights transposed; peft must be told.
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" and n.rsplit(".", 1)[-1] in targets
                         for n, m in model.named_modules())
    placement = {}
    if layers is not None:
        placement = dict(layers_to_transform=list(layers), layers_pattern=find_layer_list(model)[0].rsplit(".", 1)[-1])
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=fan_in_fan_out, modules_to_save=modules_to_save, **placement)
    try:
        # peft probes a deprecated Transformers attribute; the warning is not the user's concern.
        with warnings.catch_warnings(action="ignore", category=FutureWarning):
            wrapped = get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(f"cannot attach LoRA to modules {targets}: {exc}") from exc
    return wrapped


# q/k/v projections by architecture: the LLM-Neo setting for a LoRA student.
STUDENT_LORA_TARGETS = {
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "k_proj", "v_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj"],
}
HEAD_NAMES = ("classifier", "score")


def default_student_lora_targets(model: nn.Module) -> list[str]:
    """The student's attention q/k/v projections for known architectures, else peft's defaults."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return list(STUDENT_LORA_TARGETS.get(model_type) or default_lora_targets(model))


def attach_student_lora(student: nn.Module, r: int, alpha: int, dropout: float,
                        target_modules: list[str] | None) -> nn.Module:
    """LoRA adapters on the student (default q/k/v); the adapters and the classification head (if
    any: a head initialised for the task must learn it) are its trainable parameters."""
    heads = sorted({n.rsplit(".", 1)[-1] for n, _ in student.named_modules() if n.rsplit(".", 1)[-1] in HEAD_NAMES})
    return attach_lora(student, r, alpha, dropout, target_modules or default_student_lora_targets(student),
                       modules_to_save=heads or None)


def meta_parameters(teacher: nn.Module, mode: str, layers: list[int] | None = None) -> list[nn.Parameter]:
    """Set ``requires_grad`` for the meta mode and return φ, the teacher parameters it trains:
    the LoRA adapters (lora), every weight but adapters (full), nothing (none);
    ``layers``: only parameters inside these transformer blocks (None: anywhere)."""
    prefixes = None
    if layers is not None:
        path = find_layer_list(teacher)[0]
        prefixes = tuple(f"{path}.{i}." for i in layers)
    phi = []
    for name, p in teacher.named_parameters():
        train = (mode == "full" and LORA_MARKER not in name) or (mode == "lora" and LORA_MARKER in name)
        train = train and (prefixes is None or name.startswith(prefixes))
        p.requires_grad_(train)
        if train:
            phi.append(p)
    if mode != "none" and not phi:
        raise ModelError(f"meta_update={mode!r} found no teacher parameters to train")
    return phi


def count_parameters(params: Iterator[nn.Parameter] | list[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)
