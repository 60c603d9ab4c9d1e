"""Data-parallel distillation over processes (``accelerate launch`` or ``torchrun``).

Every process runs the same seeded program on the same global batch and takes its own
contiguous slice of the rows (:meth:`Dist.shard`). The losses are means over examples, so with
equal slices the global loss is the mean over processes of the slices' losses, and every
gradient of it is the mean over processes of the slices' gradients: averaging the student's
gradients, the pilot and quiz gradients of the meta-step and the teacher's meta-gradient
(:meth:`Dist.all_reduce_mean`) gives every process the one-process result, so the models stay
identical everywhere without ever being broadcast. Only the per-step randomness (dropout) is
seeded with the rank too (``metakd.rng.step_seed``), so each process draws its own masks.

In a single process (no ``WORLD_SIZE`` > 1 in the environment) :class:`Dist` is a no-op: it
neither imports accelerate nor initialises ``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from .config import ConfigError, DistillConfig

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Where launchers put the number of processes: torchrun and ``accelerate launch`` (WORLD_SIZE),
and MPI launchers (``accelerate launch --cpu`` with an mpirun hostfile)."""

BUCKET_ELEMENTS = 1 << 25
"""All-reduce tensors in flat buckets of at most this many elements (one collective per bucket)."""


RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def env_rank() -> int:
    """This process's rank as the launcher set it (0 when no launcher did); reads only the
    environment, so it answers before (and without) any process group."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name)
        if value:
            return int(value)
    return 0


def env_world_size() -> int:
    """The number of processes the launcher started (1 when none did)."""
    for name in WORLD_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value:
            return int(value)
    return 1


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run: ``rank`` of ``world_size``, and the ``device``
    its models live on (None in a single process: wherever the caller put them)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        """The single-process no-op, or (when a launcher started several processes) the process
        group that ``accelerate.PartialState`` initialises: gloo on CPU, NCCL on GPUs (one GPU per
        process, made the current CUDA device)."""
        if env_world_size() <= 1:
            return cls()
        from accelerate import PartialState

        forced_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        state = PartialState(cpu=forced_cpu or not torch.cuda.is_available())
        if state.num_processes <= 1:
            raise RuntimeError(f"the launcher started {env_world_size()} processes but accelerate set up "
                               f"{state.distributed_type}: no process group to average over")
        device = torch.device(state.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        elif device.type == "cpu":
            device = torch.device("cpu")
        return cls(rank=state.process_index, world_size=state.num_processes, device=device,
                   local_rank=state.local_process_index)

    @property
    def is_main(self) -> bool:
        """The process that prints, writes files and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ checks
    def check_config(self, cfg: DistillConfig) -> None:
        """Raise ConfigError for settings that cannot run data-parallel over ``world_size`` processes."""
        if not self.distributed:
            return
        w = self.world_size
        sizes = [("batch_size", cfg.batch_size)]
        if cfg.meta_update != "none":
            sizes.append(("quiz_batch_size" if cfg.quiz_batch_size else "quiz batch size (= batch_size)",
                          cfg.quiz_batch_size or cfg.batch_size))
        if cfg.meta_update != "none" and cfg.meta_batch_size is not None:
            sizes.append(("meta_batch_size", cfg.meta_batch_size))  # each process: the first share of its rows
        for name, size in sizes:
            if size % w:
                raise ConfigError(f"{name} {size} is not divisible by the {w} processes: every process takes an "
                                  f"equal share of the global batch; use a multiple of {w}")
        if cfg.meta_update != "none" and cfg.meta_grad == "higher":
            raise ConfigError(f"meta_grad='higher' cannot run over {w} processes: it differentiates through the "
                              "unrolled pilot step, which an all-reduce of the pilot gradient would cut; use "
                              "meta_grad='jvp' (exact) or 'finite_diff' for multi-process runs (one SGD pilot step, "
                              "unroll_steps=1)")

    # ------------------------------------------------------------------ data
    def shard(self, batch: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """This process's contiguous slice of the global ``batch``: rows
        ``[rank·B/W, (rank+1)·B/W)`` of every tensor (nested mappings too). A batch whose B is not
        divisible by W (the last, short batch of an epoch) is not split: every process takes all
        of it, so the average over processes is the whole batch's value, exactly."""
        if batch is None or not self.distributed:
            return batch
        rows = _rows(batch)
        if rows is None or rows % self.world_size:
            return batch
        n = rows // self.world_size
        return _slice(batch, self.rank * n, (self.rank + 1) * n)

    # ------------------------------------------------------------------ collectives
    def all_reduce_mean(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The element-wise mean over processes of each tensor (new tensors, detached; the inputs
        are untouched). Tensors are packed into flat buckets by dtype and device: few collectives,
        and every process gets bit-identical results."""
        tensors = list(tensors)
        if not self.distributed:
            return tensors
        import torch.distributed as tdist

        out: list[Tensor | None] = [None] * len(tensors)
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault((t.dtype, t.device), []).append(i)
        for indices in groups.values():
            for bucket in _buckets(indices, [tensors[i].numel() for i in indices]):
                flat = torch.cat([tensors[i].detach().reshape(-1) for i in bucket])
                tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
                flat.div_(self.world_size)
                offset = 0
                for i in bucket:
                    n = tensors[i].numel()
                    out[i] = flat[offset:offset + n].view_as(tensors[i])
                    offset += n
        return out  # type: ignore[return-value]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as tdist

            tdist.barrier()


def _rows(batch: Mapping[str, Any]) -> int | None:
    for value in batch.values():
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
        if isinstance(value, Mapping):
            rows = _rows(value)
            if rows is not None:
                return rows
    return None


def _slice(batch: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() > 0:
            out[key] = value[start:stop]
        elif isinstance(value, Mapping):
            out[key] = _slice(value, start, stop)
        else:
            out[key] = value
    return out


def _buckets(indices: list[int], sizes: list[int]) -> list[list[int]]:
    buckets, current, filled = [], [], 0
    for i, size in zip(indices, sizes):
        if current and filled + size > BUCKET_ELEMENTS:
            buckets.append(current)
            current, filled = [], 0
        current.append(i)
        filled += size
    if current:
        buckets.append(current)
    return buckets


__all__ = ["Dist", "env_rank", "env_world_size"]
