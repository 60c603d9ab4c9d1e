"""Which teacher blocks learn (``teacher_layers``) and the frozen trunk below them.

The *trunk* is every transformer block below the lowest learning block (with the embeddings,
which never learn when ``teacher_layers`` is not "all"). Its weights never change, so

- it runs under ``torch.no_grad()``: no activations are kept for it and the teacher backward of
  the meta-step stops at its output; the caller runs it in the teacher's autocast
  (``MetaStep.run_trunk``), so the replayed outputs are those of a plain teacher forward;
- its output on a batch is computed once per meta-step (:meth:`FrozenTrunk.run`) and replayed
  (:meth:`FrozenTrunk.reused`) in the teacher forward attached to φ and, with ``pilot="restore"``,
  in the second teacher forward after the teacher step: only the learning blocks (and the head)
  are recomputed.

Replaying works for any model whose blocks form an ``nn.ModuleList`` called in order with the
hidden states first (BERT, GPT-2, Llama): each trunk block's forward is replaced by one that
returns its recorded output, cut to the rows of the batch it is given.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from .config import check_teacher_layers
from .models import ModelError

TeacherLayers = Any  # "all", "top:k" or a list of block indices


def resolve_teacher_layers(spec: TeacherLayers, n_blocks: int) -> list[int] | None:
    """The sorted indices of the learning blocks of a teacher with ``n_blocks`` blocks (None for
    "all"); ModelError, naming the block count, when ``spec`` names none or too many."""
    check_teacher_layers(spec)
    if spec == "all":
        return None
    if isinstance(spec, str):
        k = int(spec.partition(":")[2])
        if k > n_blocks:
            raise ModelError(f"teacher_layers={spec!r} names {k} blocks but the teacher has {n_blocks} blocks")
        return list(range(n_blocks - k, n_blocks))
    bad = [i for i in spec if i >= n_blocks]
    if bad:
        raise ModelError(f"teacher_layers={list(spec)!r} names block(s) {bad} but the teacher has {n_blocks} blocks "
                         f"(indices 0..{n_blocks - 1})")
    return sorted(spec)


@dataclass
class TrunkOutput:
    """The outputs of the trunk blocks on one batch (no grad): the last trunk block's, and those of
    trunk blocks whose outputs the feature loss reads."""

    outputs: dict[int, Any]
    rows: int


class _StopForward(Exception):
    """Raised after the last trunk block to end a trunk-only forward."""


def _rows_of(value: Any) -> int:
    tensor = value[0] if isinstance(value, (tuple, list)) else value
    return int(tensor.shape[0])


def _leading_rows(value: Any, rows: int) -> Any:
    if isinstance(value, Tensor):
        return value[:rows]
    if isinstance(value, (tuple, list)):
        return type(value)(_leading_rows(v, rows) for v in value)
    return value


class FrozenTrunk:
    """The blocks ``0..start-1`` of ``model`` (and its embeddings): run once without grad, replayed.

    ``keep``: trunk block indices whose outputs are kept besides the last one (hidden states the
    feature loss reads: layer i is the output of block i-1)."""

    def __init__(self, model: nn.Module, blocks_path: str, start: int, keep: Sequence[int] = ()):
        if start < 1:
            raise ValueError(f"a frozen trunk needs at least one block below the learning ones, start={start}")
        self.model = model
        self.blocks = model.get_submodule(blocks_path)
        self.start = start
        self.keep = sorted({start - 1, *(i for i in keep if 0 <= i < start)})

    def run(self, inputs: Mapping[str, Tensor]) -> TrunkOutput:
        """The trunk's outputs on ``inputs`` (embeddings and blocks below ``start`` only, no grad)."""
        found: dict[int, Any] = {}
        handles = []
        for i in self.keep:
            def hook(_module, _args, output, i=i):
                found[i] = output
                if i == self.start - 1:
                    raise _StopForward
            handles.append(self.blocks[i].register_forward_hook(hook))
        try:
            with torch.no_grad(), _no_cache(self.model):
                self.model(**inputs)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        if self.start - 1 not in found:
            raise ModelError(f"{type(self.model).__name__} did not run its block {self.start - 1}: cannot record "
                             "the frozen trunk's output")
        return TrunkOutput(found, _rows_of(found[self.start - 1]))

    @contextmanager
    def reused(self, trunk: TrunkOutput) -> Iterator[None]:
        """While active, the trunk blocks return ``trunk``'s outputs (the first rows, as many as the
        batch they are given) instead of computing them; the embeddings still run (cheap)."""
        last = trunk.outputs[self.start - 1]
        patched = []
        for i in range(self.start):
            block = self.blocks[i]
            recorded = trunk.outputs.get(i, last)
            patched.append((block, "forward" in vars(block), block.forward))
            block.forward = _Replay(recorded, trunk.rows)
        try:
            with _no_cache(self.model):
                yield
        finally:
            for block, had_own, original in patched:
                if had_own:
                    block.forward = original
                else:
                    del block.forward


class _Replay:
    """A trunk block's forward that returns its recorded output cut to the given batch's rows."""

    def __init__(self, recorded: Any, rows: int):
        self.recorded, self.rows = recorded, rows

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rows = _rows_of(args[0] if args else kwargs["hidden_states"])
        if rows > self.rows:
            raise ValueError(f"the frozen trunk was recorded on {self.rows} rows and cannot serve a batch of {rows}")
        return self.recorded if rows == self.rows else _leading_rows(self.recorded, rows)


@contextmanager
def _no_cache(model: nn.Module) -> Iterator[None]:
    """The model's KV cache off meanwhile: a decoder would otherwise expect entries for the
    skipped trunk blocks."""
    config = getattr(model, "config", None)
    cached = getattr(config, "use_cache", None)
    if cached:
        config.use_cache = False
    try:
        yield
    finally:
        if cached:
            config.use_cache = cached


def first_rows(batch: Mapping[str, Any], rows: int | None) -> Mapping[str, Any]:
    """The first ``rows`` rows of every tensor of ``batch`` (nested mappings too); the batch itself
    when ``rows`` is None or not smaller than it."""
    if rows is None:
        return batch
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() > 0:
            if value.shape[0] <= rows:
                return batch
            out[key] = value[:rows]
        elif isinstance(value, Mapping):
            out[key] = first_rows(value, rows)
        else:
            out[key] = value
    return out


__all__ = ["FrozenTrunk", "TrunkOutput", "check_teacher_layers", "first_rows", "resolve_teacher_layers"]
