"""Run a model on a batch and collect what distillation reads: logits and chosen hidden states.

Hidden states are captured with forward hooks on the model's transformer blocks rather than with
``output_hidden_states``: hooks work for any ``nn.Module`` and for the functional copies that
``higher`` makes (which lose Transformers' own output-capturing hooks).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .models import find_layer_list

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@dataclass
class Outputs:
    """Logits ``[B, C]`` and hidden states by layer index (0 = embeddings output)."""

    logits: Tensor
    hidden: dict[int, Tensor] = field(default_factory=dict)


def to_device(batch: Any, device: "torch.device | str") -> Any:
    """``batch`` (a tensor, or a mapping of them, nested for split-tokenizer batches) on ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def model_inputs(batch: Mapping[str, Any], side: str) -> dict[str, Tensor]:
    """The inputs ``side`` ('teacher' or 'student') sees: the shared inputs, or its own sub-dict."""
    source = batch[side] if side in batch else batch
    return {k: v for k, v in source.items() if k in MODEL_INPUT_KEYS}


def shares_inputs(batch: Mapping[str, Any]) -> bool:
    """True when teacher and student read the same token ids (token-level features align)."""
    return "teacher" not in batch and "student" not in batch


@contextmanager
def capture_hidden(model: nn.Module, blocks_path: str, layers: set[int]) -> Iterator[dict[int, Tensor]]:
    """Collect hidden states of ``layers`` while the block is active.

    Layer 0 is the input of the first block, layer i the output of block i-1 — the convention of
    Transformers' ``hidden_states`` tuple.
    """
    found: dict[int, Tensor] = {}
    if not layers:
        yield found
        return
    blocks = model.get_submodule(blocks_path)
    handles = []
    if 0 in layers:
        def pre_hook(_module, args, kwargs):
            found[0] = args[0] if args else kwargs["hidden_states"]
        handles.append(blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
    for i, block in enumerate(blocks, start=1):
        if i in layers:
            def hook(_module, _args, output, i=i):
                found[i] = output[0] if isinstance(output, (tuple, list)) else output
            handles.append(block.register_forward_hook(hook))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


@contextmanager
def checkpointed_blocks(model: nn.Module, blocks_path: str, only: Iterable[int] | None = None) -> Iterator[None]:
    """While active, every transformer block of ``model`` (or only the blocks at the indices
    ``only``) runs under activation checkpointing (``use_reentrant=False``): a forward keeps only each block's inputs and the backward recomputes
    the rest. Works in eval mode (unlike Transformers' own switch) and leaves forward hooks intact.

    The model's KV cache is off meanwhile (``config.use_cache``), as under Transformers' own
    checkpointing: a decoder block (GPT-2) appends its keys to the cache object it was given, and
    the recompute would append them a second time."""
    blocks = model.get_submodule(blocks_path)
    config = getattr(model, "config", None)
    cached = getattr(config, "use_cache", None)
    if cached:
        config.use_cache = False
    originals = []
    chosen = None if only is None else set(only)
    for i, block in enumerate(blocks):
        if chosen is not None and i not in chosen:
            continue
        original = block.forward
        originals.append((block, "forward" in vars(block)))
        block.forward = partial(_checkpointed, original)
    try:
        yield
    finally:
        for block, had_own in originals:
            if had_own:
                block.forward = block.forward.args[0]
            else:
                del block.forward
        if cached:
            config.use_cache = cached


def _checkpointed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def blocks_path(model: nn.Module) -> str:
    """Dotted path of the model's transformer blocks, checked to exist."""
    return find_layer_list(model)[0]


def run(model: nn.Module, inputs: Mapping[str, Tensor], path: str | None, layers: set[int]) -> Outputs:
    """Forward ``model`` on ``inputs``; returns logits and the requested hidden states."""
    if not layers:
        return Outputs(model(**inputs).logits)
    assert path is not None
    with capture_hidden(model, path, layers) as hidden:
        logits = model(**inputs).logits
    missing = layers - hidden.keys()
    if missing:
        raise ValueError(f"layers {sorted(missing)} were not produced by {type(model).__name__}")
    return Outputs(logits, dict(hidden))
