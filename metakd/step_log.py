"""Step logs a user can watch: one JSON line per training step in ``DIR/log.jsonl`` (losses, teacher
grad norm, skipped flag, learning rates, seconds, memory, energy, ETA) and, with
``report_to="tensorboard"``, the same scalars as TensorBoard events in ``DIR/tensorboard``."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import ConfigError
from .telemetry import EnergyMeter, cpu_seconds, peak_rss_bytes

LOG_FILE = "log.jsonl"
FINETUNE_LOG_FILE = "teacher_log.jsonl"
"""The teacher's fine-tuning steps (``finetune-teacher``, or ``distill`` fine-tuning a teacher
first): beside ``log.jsonl``, which the distillation that may follow in the same run rewrites."""
TENSORBOARD_DIR = "tensorboard"


def tensorboard_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line ConfigError when the optional
    ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("report_to='tensorboard' needs the tensorboard package: pip install 'metakd[tensorboard]' "
                          "(or set report_to to null; OUTPUT/log.jsonl is written either way)") from None
    return SummaryWriter


def check_report_to(report_to: str | None) -> None:
    """Fail before any model loads when ``report_to`` cannot be served here."""
    if report_to == "tensorboard":
        tensorboard_writer_class()


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (``?`` while unknown)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class StepLog:
    """Writes each step's scalars as it finishes. ``begin()`` before a step, ``end(metrics, ...)``
    after it: the line holds every numeric entry of ``metrics`` (losses, ``teacher_grad_norm``,
    ``skipped``, ``seconds``, per-phase times) plus

    - ``lr_<name>``: the first parameter group's learning rate of each named optimizer;
    - ``memory_bytes``: on CUDA the peak ``max_memory_allocated`` of the step, else the process's
      peak RSS so far (``memory_source`` in the first line says which);
    - ``energy_joules``: the step's energy from NVML/RAPL, else ``cpu_seconds x W/core`` with
      ``energy_estimated`` 1;
    - ``eta_seconds``: the mean time of the steps after the first, times the steps left.

    ``resume_step``: continue a log whose run resumed at that step (lines at or after it, written
    after the checkpoint, are dropped, and so are TensorBoard events: ``purge_step``); None starts
    a new log. ``filename``: the log's name in
    ``directory`` (``FINETUNE_LOG_FILE`` for the teacher's fine-tuning)."""

    def __init__(self, directory: str | Path, device: torch.device | str, total_steps: int,
                 report_to: str | None = None, resume_step: int | None = None, filename: str = LOG_FILE):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / filename
        self.device = torch.device(device)
        self.total = int(total_steps)
        kept = self._kept_lines(resume_step)
        self._file = self.path.open("w", encoding="utf-8")
        self._file.writelines(kept)
        self._file.flush()
        # purge_step: TensorBoard drops the events at or after it that earlier files hold (those a
        # killed run wrote after its checkpoint; all of them for a new run), as log.jsonl drops its lines
        self._writer = (tensorboard_writer_class()(log_dir=str(self.directory / TENSORBOARD_DIR),
                                                   purge_step=resume_step if resume_step is not None else 0)
                        if report_to == "tensorboard" else None)
        self._meter = EnergyMeter()
        self._counter = self._meter.open_counter()
        self.energy_source = self._counter.source if self._counter is not None else self._meter.estimate_source
        self.memory_source = "cuda max_memory_allocated (per step)" if self.device.type == "cuda" else \
            "peak RSS so far (ru_maxrss)"
        self._timed: list[float] = []  # seconds of the steps after the first one this process ran
        self._first = True
        self._start = (0.0, 0.0, None)

    def _kept_lines(self, resume_step: int | None) -> list[str]:
        if resume_step is None or not self.path.is_file():
            return []
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True):
            try:
                if json.loads(line)["step"] < resume_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (ValueError, KeyError, TypeError):  # a line cut by a kill
                continue
        return kept

    def begin(self) -> None:
        """Mark the start of a step (resets the CUDA peak, reads the energy counter)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = (time.perf_counter(), cpu_seconds(), self._read_energy())

    def _read_energy(self) -> float | None:
        if self._counter is None:
            return None
        try:
            return self._counter.read()
        except Exception:  # a counter that fails mid-run: estimate from here on
            self._counter, self.energy_source = None, self._meter.estimate_source
            return None

    def end(self, metrics: Mapping[str, Any], optimizers: Mapping[str, torch.optim.Optimizer | None],
            steps_done: int) -> dict[str, Any]:
        """Write the line of the step that just finished (``steps_done`` steps done in all); returns it."""
        wall0, cpu0, energy0 = self._start
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - wall0
        energy1 = self._read_energy() if energy0 is not None else None
        estimated = energy1 is None
        energy = self._meter.estimate(cpu_seconds() - cpu0) if estimated else energy1 - energy0
        line: dict[str, Any] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        line["step"] = int(metrics.get("step", steps_done - 1))
        line.setdefault("seconds", seconds)  # the distiller's steps time themselves; others are timed here
        for name, opt in optimizers.items():
            if opt is not None:
                line[f"lr_{name}"] = float(opt.param_groups[0]["lr"])
        line["memory_bytes"] = (int(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda"
                                else peak_rss_bytes())
        line["energy_joules"] = float(energy)
        line["energy_estimated"] = int(estimated)
        if not self._first:
            self._timed.append(seconds)
        self._first = False
        left = max(self.total - steps_done, 0)
        line["eta_seconds"] = (sum(self._timed) / len(self._timed) * left if self._timed
                               else (0.0 if left == 0 else math.nan))
        if line["step"] == 0 or self._file.tell() == 0:
            line["memory_source"], line["energy_source"] = self.memory_source, self.energy_source
        self._file.write(json.dumps(line, allow_nan=True) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in line.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"train/{key}", value, line["step"])
        return line

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def read_log(directory: str | Path, filename: str = LOG_FILE) -> list[dict[str, Any]]:
    """The lines of ``DIR/log.jsonl`` (or ``DIR/filename``) as dicts."""
    return [json.loads(line) for line in (Path(directory) / filename).read_text(encoding="utf-8").splitlines() if line]


__all__ = ["FINETUNE_LOG_FILE", "LOG_FILE", "StepLog", "TENSORBOARD_DIR", "check_report_to", "format_eta", "read_log",
           "tensorboard_writer_class"]
