"""Offline causal-LM teachers: a byte-level BPE tokenizer trained on the corpus and a randomly
initialised GPT-2/Llama of a given size, to be trained from scratch by ``finetune-teacher``. Users
online name a pretrained model instead (``gpt2``, ``meta-llama/Llama-3.2-1B``, ...)."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from .models import ModelError

SPECIAL = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (GPT-2 style) trained on ``texts``; its last two
    ids are ``<|endoftext|>`` (eos, bos) and ``<|pad|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ModelError(f"a byte-level BPE vocabulary needs at least 300 entries (256 bytes + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL.values()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL["eos_token"], **SPECIAL)


def new_causal_lm(arch: str, tokenizer: Any, seed: int = 0, **sizes: Any) -> nn.Module:
    """A randomly initialised ``gpt2`` or ``llama`` causal LM for ``tokenizer``'s vocabulary;
    ``sizes`` are fields of the architecture's config (e.g. ``n_layer=4, n_embd=128`` for GPT-2,
    ``num_hidden_layers=4, hidden_size=128`` for Llama)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if arch == "gpt2":
        config_cls, model_cls = GPT2Config, GPT2LMHeadModel
    elif arch == "llama":
        config_cls, model_cls = LlamaConfig, LlamaForCausalLM
    else:
        raise ModelError(f"unknown architecture {arch!r} for a new causal LM; use 'gpt2' or 'llama'")
    unknown = [k for k in sizes if not hasattr(config_cls(), k)]
    if unknown:
        raise ModelError(f"{config_cls.__name__} has no field(s) {unknown}")
    torch.manual_seed(seed)
    return model_cls(config_cls(**ids, **sizes))


__all__ = ["new_causal_lm", "train_bpe_tokenizer"]
