"""Checkpoints of a distillation run, so a killed run continues where it stopped.

A checkpoint is a directory written all at once (temporary directory + rename):

- ``state.safetensors``: the student (with its feature projections), the teacher's trained
  parameters (LoRA adapters, or every weight in ``meta_update="full"``), both optimizers' state
  tensors and the states the distiller's shuffle generators had when this ``fit`` started;
- ``checkpoint.json``: format and version, the step reached and the step this ``fit`` started
  at, the distillation config, the optimizers' hyper-parameters, the metrics so far and the
  SHA-256 of the tensor file.

The data position is the number of steps this ``fit`` has done: on resume the loaders are
rebuilt from the saved generator states and replayed to that point, so the next batch is the
one an uninterrupted run would have seen. Dropout needs no saved state: each step seeds it from
the config's seed, the process's rank and the step number (``metakd.rng``). Nothing is
unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_directory
from .config import ConfigError, DistillConfig

FORMAT = "metakd.checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 1 (before the shuffle generators were saved) resumes a run's first ``fit``."""
STATE_FILE = "state.safetensors"
META_FILE = "checkpoint.json"
RESUMABLE_CHANGES = {"progress", "checkpoint_every", "max_steps", "epochs", "eval_every", "eval_batch_size",
                     "max_bad_steps"}
"""Config fields a resumed run may change: they decide how long and how loudly it runs, not the
numbers of the steps already taken."""


class CheckpointError(ConfigError):
    """A checkpoint is missing, corrupt or from a different run; the message says which."""


# ---------------------------------------------------------------------------- optimizers
def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state tensors under ``prefix.INDEX.KEY`` and the rest as JSON."""
    if optimizer is None:
        return {}, {}
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(prefix: str, optimizer: torch.optim.Optimizer | None, meta: dict, tensors: dict) -> None:
    """Restore ``optimizer`` from ``optimizer_tensors``' output (a CheckpointError when it does not fit)."""
    if optimizer is None:
        return
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        head, _, rest = name.partition(".")
        if head != prefix:
            continue
        index, _, key = rest.partition(".")
        state.setdefault(int(index), {})[key] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"the checkpoint's {prefix} optimizer does not fit this run: {exc}") from None


# ---------------------------------------------------------------------------- the models
def _teacher_trained(teacher: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in teacher.named_parameters() if p.requires_grad}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(directory: str | Path, distiller: Any, history: dict[str, list],
                    data: dict[str, Any] | None = None) -> Path:
    """Write the distiller's state after ``distiller.steps_done`` steps to ``directory``; ``data``
    (``data_fingerprint``) lets a resume check that it trains on the same examples."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, value in distiller.student_module.state_dict().items():
        tensors[f"student.{name}"] = value.detach().cpu().contiguous()
    for name, value in _teacher_trained(distiller.teacher).items():
        tensors[f"teacher.{name}"] = value.detach().cpu().contiguous()
    state_meta, state_tensors = distiller.state.checkpoint_entries()
    tensors.update(state_tensors)
    guard = getattr(distiller, "guard", None)
    guard_meta, guard_tensors = guard.state() if guard is not None else (None, {})
    tensors.update(guard_tensors)
    initial = getattr(distiller, "initial_teacher", None)
    if initial is not None:
        tensors.update(initial.state())
    tensors = _unshare(tensors)
    meta = {"format": FORMAT, "version": VERSION, "config": distiller.config.to_dict(), **state_meta,
            "history": history, "data": data, "teacher_guard": guard_meta}
    with atomic_directory(directory) as tmp:
        save_file(tensors, str(tmp / STATE_FILE), metadata={"format": FORMAT})
        meta["sha256"] = file_sha256(tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, default=float))
    return Path(directory)


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors that share memory with an earlier one (tied weights): safetensors refuses
    shared storage, and loading assigns each name on its own anyway."""
    seen, out = set(), {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[name] = t.clone() if key in seen and t.numel() else t
        seen.add(key)
    return out


def located(directory: str | Path) -> Path:
    """``directory``, or the previous checkpoint a kill between the two renames of an atomic write
    left beside it (``.NAME.old``)."""
    directory = Path(directory)
    old = directory.with_name(f".{directory.name}.old")
    return old if not (directory / META_FILE).is_file() and (old / META_FILE).is_file() else directory


def data_fingerprint(dataset: Any) -> dict[str, Any] | None:
    """Size and SHA-256 of an encoded data set's tensors (None for a DataLoader: not checked)."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return None
    digest = hashlib.sha256()
    for i in range(len(dataset)):
        item = dataset[i]
        for key in sorted(item):
            value = item[key]
            digest.update(key.encode())
            digest.update(value.numpy().tobytes() if isinstance(value, torch.Tensor) else repr(value).encode())
    return {"examples": len(dataset), "sha256": digest.hexdigest()}


def has_checkpoint(directory: str | Path) -> bool:
    return (located(directory) / META_FILE).is_file()


def read_meta(directory: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` of ``directory``, checked for format, version and tensor-file integrity."""
    directory = located(directory)
    path = directory / META_FILE
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {directory} (no {META_FILE})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is corrupt (not valid JSON: {exc}); delete {directory} to start over") from None
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: not a metakd checkpoint of version {'/'.join(map(str, READABLE_VERSIONS))} "
                              f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
    state = directory / STATE_FILE
    if not state.is_file() or file_sha256(state) != meta.get("sha256"):
        raise CheckpointError(f"{state} is missing or corrupt (its checksum does not match {META_FILE}); "
                              f"delete {directory} to start over")
    return meta


def check_config(saved: dict[str, Any], config: Any) -> None:
    """Refuse to resume with a config that would change the steps already taken."""
    current = json.loads(json.dumps(config.to_dict(), default=float))  # as saved: JSON keys are strings
    defaults = json.loads(json.dumps(DistillConfig().to_dict(), default=float))  # fields newer than the checkpoint
    differ = sorted(k for k in set(saved) | set(current)
                    if k not in RESUMABLE_CHANGES and saved.get(k, defaults.get(k)) != current.get(k))
    if differ:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differ[:4])
        raise CheckpointError(f"the checkpoint was written by a run with different settings ({pairs}); resume with "
                              "the same config or start over in a new output directory")


def load_checkpoint(directory: str | Path, distiller: Any, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Restore ``distiller`` from ``directory`` (models, optimizers, counters) and return the
    checkpoint's metadata, with ``"fit_start"`` holding the step and the shuffle generator states
    its ``fit`` started from, for the caller to replay the data."""
    from safetensors.torch import load_file

    directory = located(directory)
    meta = read_meta(directory)
    check_config(meta["config"], distiller.config)
    if data is not None and meta.get("data") is not None and meta["data"] != data:
        raise CheckpointError(f"the checkpoint in {directory} was trained on other data ({meta['data']['examples']} "
                              f"examples, fingerprint {meta['data']['sha256'][:12]}) than this run "
                              f"({data['examples']}, {data['sha256'][:12]}); resume with the same data settings")
    tensors = load_file(str(Path(directory) / STATE_FILE))
    student = {k.partition(".")[2]: v for k, v in tensors.items() if k.startswith("student.")}
    own = distiller.student_module.state_dict()
    if set(student) != set(own) or any(student[k].shape != own[k].shape for k in own):
        raise CheckpointError(f"the checkpoint in {directory} holds a different student "
                              f"({len(student)} tensors vs {len(own)} here); same run, same models?")
    teacher = {k.partition(".")[2]: v for k, v in tensors.items() if k.startswith("teacher.")}
    trained = _teacher_trained(distiller.teacher)
    if set(teacher) != set(trained) or any(teacher[k].shape != trained[k].shape for k in trained):
        raise CheckpointError(f"the checkpoint in {directory} trained other teacher parameters "
                              f"({len(teacher)} tensors vs {len(trained)} here)")
    with torch.no_grad():
        distiller.student_module.load_state_dict(student)
        for name, p in trained.items():
            p.copy_(teacher[name])
    fit_start = distiller.state.load_checkpoint_entries(meta, tensors, directory)
    if getattr(distiller, "guard", None) is not None:
        distiller.guard.load(meta.get("teacher_guard"), tensors)
    if getattr(distiller, "initial_teacher", None) is not None:
        distiller.initial_teacher.load(tensors, distiller.device)
    meta["fit_start"] = fit_start
    return meta


class TrainingInterrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after a checkpoint was written."""

    def __init__(self, signal_name: str, step: int, directory: str | Path | None):
        self.signal_name, self.step, self.directory = signal_name, step, directory
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint in {directory}")

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number."""
        import signal

        return 128 + int(getattr(signal, self.signal_name, signal.SIGTERM))


class StopSignals:
    """While active, SIGTERM and SIGINT only set ``signal`` (the name), so the training loop can
    finish its step, write a checkpoint and stop; a second signal stops at once. Does nothing
    when ``enabled`` is False or outside the main thread."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.signal, self._previous = enabled, None, {}

    def _handle(self, signum, frame) -> None:
        import signal

        if self.signal is not None:  # asked twice: stop now
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        import signal
        import threading

        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


__all__ = ["CheckpointError", "StopSignals", "TrainingInterrupted", "has_checkpoint", "load_checkpoint",
           "save_checkpoint"]
