"""The random streams of a distillation run, kept apart from the caller's global RNG.

- Initialisation (LoRA adapters, feature projections) runs with the global RNG seeded by the
  config's seed, then the caller's state is put back (:func:`seeded`).
- Shuffling the training and quiz data uses ``torch.Generator`` objects the distiller owns,
  seeded by the config's seed, the same in every process (each takes its slice of the same
  global batch); a second ``fit`` continues them, so it draws other batches.
- Per-step randomness (dropout) runs with the global RNG seeded by :func:`step_seed` of the
  config's seed, the process's rank and the step number: another mask in every step and every
  process, the same ones again from the same seed, and an exact resume from a step count alone.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import torch


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for step ``step`` of process ``rank`` in a run seeded ``seed`` (BLAKE2b of the
    three, so nearby seeds, ranks and steps give unrelated streams)."""
    digest = hashlib.blake2b(f"metakd-step:{seed}:{rank}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _cuda_index(device: torch.device | None) -> int | None:
    if device is None or device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


@contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with the global CPU RNG (and that of ``device`` when it is a GPU) seeded by
    ``seed``; the caller's RNG states are restored afterwards."""
    index = _cuda_index(device)
    with torch.random.fork_rng(devices=[] if index is None else [index]):
        torch.default_generator.manual_seed(seed)
        if index is not None:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def shuffle_generators(seed: int) -> dict[str, torch.Generator]:
    """The generators that shuffle the training data (``seed``) and the quiz data (``seed + 1``)."""
    return {"train": torch.Generator().manual_seed(seed), "quiz": torch.Generator().manual_seed(seed + 1)}


__all__ = ["seeded", "shuffle_generators", "step_seed"]
