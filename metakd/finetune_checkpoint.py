"""Checkpoints of the teacher's fine-tuning, so a stopped (SIGTERM/SIGINT) or killed fine-tuning
continues where it was instead of starting over: the model's weights, the optimizer's and the
learning-rate schedule's state, the step reached, the RNG state and the settings it was started
with (a checkpoint written with other settings is not resumed). Written all at once
(``atomic_directory``), safetensors and JSON only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_directory
from .rng import global_rng_tensors
from .checkpoint import (STATE_FILE, CheckpointError, load_optimizer, optimizer_tensors, file_sha256,
                         _unshare)

FORMAT = "metakd.finetune-checkpoint"
VERSION = 1
META_FILE = "finetune_checkpoint.json"


def save_finetune_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                             schedule: Any, steps_done: int, losses: list[float], settings: dict[str, Any]) -> Path:
    """Write the fine-tuning state after ``steps_done`` steps to ``directory``."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt, opt_meta = optimizer_tensors("optim", optimizer)
    tensors.update(opt)
    tensors.update(global_rng_tensors())
    schedule_state = {k: v for k, v in schedule.state_dict().items() if k != "lr_lambdas"}
    meta = {"format": FORMAT, "version": VERSION, "steps_done": steps_done, "settings": settings,
            "optimizer": opt_meta, "schedule": schedule_state, "losses": losses}
    with atomic_directory(directory) as tmp:
        save_file(_unshare(tensors), str(tmp / STATE_FILE), metadata={"format": FORMAT})
        meta["sha256"] = file_sha256(tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, default=float))
    return Path(directory)


def finetune_checkpoint_settings(directory: str | Path) -> dict[str, Any] | None:
    """The settings a fine-tuning checkpoint in ``directory`` was written with (None: no checkpoint)."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("settings")
    except json.JSONDecodeError:
        return None


def load_finetune_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                             schedule: Any) -> dict[str, Any]:
    """Restore model, optimizer and schedule from ``directory``; returns the metadata (``steps_done``,
    ``losses``) with ``"rng"`` holding the RNG tensors to restore once the data is replayed."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is missing or corrupt ({exc}); delete {directory} to start over") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a metakd fine-tuning checkpoint of version {VERSION}")
    state = directory / STATE_FILE
    if not state.is_file() or file_sha256(state) != meta.get("sha256"):
        raise CheckpointError(f"{state} is missing or corrupt; delete {directory} to start over")
    tensors = load_file(str(state))
    weights = {k.partition(".")[2]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"the fine-tuning checkpoint in {directory} holds another model: "
                              f"{str(exc).splitlines()[0]}") from None
    load_optimizer("optim", optimizer, meta["optimizer"], tensors)
    schedule.load_state_dict(dict(meta["schedule"], lr_lambdas=[None] * len(optimizer.param_groups)))
    meta["rng"] = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return meta
