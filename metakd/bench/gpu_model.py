"""The GPU suite's models (``metakd bench gpu``): Llama shapes, random models and batches built on the
device, and the peak memory of a configuration predicted from its shapes."""

from __future__ import annotations

from typing import Any

import torch

from ..config import ConfigError

NAME = "gpu"
MODES = ("none", "lora", "full", "lora-nf4")
MODE_LABELS = {"none": "plain KD", "lora": "LoRA meta", "full": "full meta", "lora-nf4": "LoRA meta, nf4 base"}
PHASES = ("teacher_forward", "pilot", "quiz", "directional_derivative", "teacher_backward", "teacher_step",
          "student_step")
# Llama-3.2-1B, Llama-3.2-3B and Llama-3-8B shapes (vocabulary 128256); "tiny" runs the same code on a CPU.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, tie_word_embeddings=True),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
    "3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False),
}
STUDENT_SHAPE = {"tiny": "tiny"}  # every LLM size distils into the 1B shape
BATCH, SEQ = 16, 128
TINY_BATCH, TINY_SEQ = 4, 16
TARGETS = {"memory": 0.4, "energy": 0.6, "meta_vs_kd": 2.5}  # at the 8B shape (issue 18)
CORRECT_TOL = {"float64": 1e-8, "float32 sdpa": 1e-2}  # float32 finite_diff on the CPU: 1.7e-4


class SuiteError(ConfigError):
    """The suite cannot run as asked (e.g. --device cuda without a GPU)."""


# ---------------------------------------------------------------------------- models
def llama_config(size: str, attn: str = "sdpa", **changes: Any) -> Any:
    """A Llama sequence-classification config of the named shape (two labels, pad id 0)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(**{**SHAPES[size], **changes}, num_labels=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      max_position_embeddings=max(SEQ, 256))
    cfg._attn_implementation = attn
    return cfg


def parameter_count(cfg: Any) -> int:
    """Parameters of a LlamaForSequenceClassification with this config (no model built)."""
    h, layers, inter, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    head_dim = h // cfg.num_attention_heads
    attn = h * h * 2 + 2 * h * cfg.num_key_value_heads * head_dim  # q, o; k, v
    block = attn + 3 * h * inter + 2 * h
    return vocab * h + layers * block + h + h * cfg.num_labels  # embeddings, blocks, final norm, score head


def random_model(cfg: Any, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A randomly initialised LlamaForSequenceClassification built directly on ``device`` in ``dtype``
    (no float32 copy, nothing downloaded)."""
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForSequenceClassification(cfg)  # parameters in ``dtype``; rotary buffers stay float32
    finally:
        torch.set_default_dtype(previous)
    return model


def random_batch(vocab: int, batch: int, seq: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 2, (batch,), generator=g).to(device)}


# ---------------------------------------------------------------------------- predicted memory
def _layer_activation_bytes(cfg: Any, tokens: int, batch: int, seq: int, eager: bool) -> float:
    """bf16 bytes one block keeps for its backward (norm/attention/MLP inputs, gate/up outputs; the
    attention probabilities with eager attention)."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    probs = batch * cfg.num_attention_heads * seq * seq * 2 * 2 if eager else 0
    return tokens * (6 * h + 4 * inter) * 2 + probs


def predict_bytes(size: str, mode: str, batch: int, seq: int, meta_grad: str) -> dict[str, float]:
    """The peak memory of a configuration, predicted from its shapes before anything is allocated:
    teacher weights (bf16, or ~0.56 bytes/parameter for the nf4 blocks), the full meta-update's
    meta-gradient and AdamW states (bf16), the student (bf16 base), activations (the teacher keeps
    its block inputs under checkpointing plus one block; the student keeps its blocks' activations
    for the pilot, the quiz and the directional derivative), times 1.2, plus 1 GiB of workspace."""
    t_cfg, s_cfg = llama_config(size), llama_config(STUDENT_SHAPE.get(size, "1b"))
    n_t, n_s, tokens = parameter_count(t_cfg), parameter_count(s_cfg), batch * seq
    embed = t_cfg.vocab_size * t_cfg.hidden_size * (1 if t_cfg.tie_word_embeddings else 2)
    parts = {"teacher_weights": (embed * 2 + (n_t - embed) * 0.56) if mode == "lora-nf4" else n_t * 2.0,
             "teacher_training": n_t * 6.0 if mode == "full" else 0.0,  # meta-gradient + 2 AdamW states, bf16
             "student_weights": n_s * 2.0}
    t_layer = _layer_activation_bytes(t_cfg, tokens, batch, seq, eager=False)
    s_layer = _layer_activation_bytes(s_cfg, tokens, batch, seq, eager=meta_grad == "jvp")
    if mode == "none":
        parts["activations"] = t_layer + s_cfg.num_hidden_layers * s_layer
    else:
        parts["activations"] = (t_cfg.num_hidden_layers * tokens * t_cfg.hidden_size * 2 + t_layer
                                + 3 * s_cfg.num_hidden_layers * s_layer)
    parts["total"] = sum(parts.values()) * 1.2 + 2 ** 30
    return parts
