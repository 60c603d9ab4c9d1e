"""Fine-tune a classifier on the task (a distillation teacher must know the task first), and
cache the result on disk so later runs start at once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import data as data_mod
from .atomic import directory_mode, follow_umask
from .forward import model_inputs
from .losses import next_token_ce
from .rng import restore_global_rng


FINETUNE_VERSION = 1
"""The version of the fine-tuning code, part of a cached fine-tuned teacher's key
(``metakd.teacher_cache``): raise it with any change that alters the weights ``finetune_classifier``
produces from the same inputs (the optimizer, the schedule, the loss, the batching, the head's seeding),
so teachers fine-tuned by the old code are not reused."""

REPORT_SECONDS = 60.0
"""Without a progress bar, ``metakd finetune-teacher`` says where it is this often (seconds)."""


def cache_dir() -> Path:
    """``$METAKD_CACHE``, else ``$XDG_CACHE_HOME/metakd``, else ``~/.cache/metakd``."""
    if os.environ.get("METAKD_CACHE"):
        return Path(os.environ["METAKD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metakd"


def step_plan(examples: int, batch_size: int, epochs: int, max_steps: int | None) -> tuple[int, str]:
    """(steps, why): how many optimizer steps ``epochs`` over ``examples`` in batches of
    ``batch_size`` (the last one partial) and ``max_steps`` give, and which limit stops the run."""
    batches = math.ceil(examples / batch_size)
    full = epochs * batches
    epochs_text = f"{epochs} epoch(s) of {batches} batch(es) of {batch_size}"
    if max_steps is None:
        return full, f"{full} steps: {epochs_text}"
    if max_steps < full:
        return max_steps, (f"{max_steps} steps: max_steps {max_steps} stops it before the end of {epochs_text} "
                           f"({full} steps)")
    if max_steps > full:
        return full, (f"{full} steps: {epochs_text} end it before max_steps {max_steps} is reached (raise epochs to "
                      "run longer)")
    return full, f"{full} steps: {epochs_text}, which is max_steps too"


def finetune_classifier(model: nn.Module, train: Sequence, *, epochs: int = 2, lr: float = 5e-5,
                        batch_size: int = 32, weight_decay: float = 0.01, seed: int = 0,
                        pad_id: int = 0, progress: bool = True, task: str = "classification",
                        max_steps: int | None = None, checkpoint_dir: str | Path | None = None,
                        checkpoint_every: int | None = None, settings: dict[str, Any] | None = None,
                        log: Callable[[str], None] | None = None, log_dir: str | Path | None = None,
                        report_every: float | None = None) -> list[float]:
    """Plain supervised fine-tuning with AdamW and linear warm-up/decay; returns the step losses.

    ``log_dir``: one JSON line per step in ``log_dir/teacher_log.jsonl`` (``metakd.step_log``:
    loss, learning rate, seconds, memory, energy, ETA; a resume keeps the lines before its step).
    ``report_every`` (seconds, with ``log``): a progress line at most that often and after the
    last step, for runs without a progress bar (``--no-progress``, logs of batch jobs).

    ``task="causal_lm"`` trains on next-token cross-entropy over LM blocks (``data.encode_lm``).

    With ``checkpoint_dir`` the state is checkpointed there (``metakd.finetune_checkpoint``) every
    ``checkpoint_every`` steps and on SIGTERM/SIGINT, after which ``TrainingInterrupted`` is
    raised; a checkpoint found there that was written with the same ``settings`` (and these
    hyper-parameters) is resumed, replaying the seeded loader, so the result is the one of an
    uninterrupted run; one written with other settings is set aside (``log`` says so)."""
    from . import checkpoint as ckpt
    from .finetune_checkpoint import save_finetune_checkpoint

    if len(train) == 0:
        raise data_mod.DataError("cannot fine-tune on an empty data set")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    loader = data_mod.loader(train, batch_size, data_mod.make_collator(pad_id), shuffle=True, seed=seed)
    total = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=weight_decay)
    warmup = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    settings = json.loads(json.dumps({**(settings or {}), "epochs": epochs, "lr": lr, "batch_size": batch_size,
                                      "weight_decay": weight_decay, "seed": seed, "task": task, "total": total,
                                      "examples": len(train)}, default=str))
    losses, rng, replay = _resume_finetune(checkpoint_dir, settings, model, optimizer, schedule, total, log)
    model.train()
    done = replay
    steplog = None
    if log_dir is not None:
        from .step_log import FINETUNE_LOG_FILE, StepLog

        steplog = StepLog(log_dir, device, total, resume_step=done if done else None, filename=FINETUNE_LOG_FILE)
    reporter = _Reporter(log, report_every, total, done) if log is not None and report_every is not None else None
    with tqdm(total=total, initial=done, desc="fine-tune teacher", disable=not progress, leave=False) as bar, \
            ckpt.StopSignals(enabled=checkpoint_dir is not None) as stop, \
            (contextlib.closing(steplog) if steplog is not None else contextlib.nullcontext()):
        for _ in range(max(epochs, 1)):
            for batch in loader:
                if replay:  # the batches the checkpointed steps took
                    replay -= 1
                    if not replay:
                        restore_global_rng(rng)
                    continue
                if done >= total:
                    break
                if steplog is not None:
                    steplog.begin()
                losses.append(_supervised_step(model, {k: v.to(device) for k, v in batch.items()}, task, optimizer))
                done += 1
                if steplog is not None:  # before the schedule moves on: the rate this step used
                    steplog.end({"loss": losses[-1]}, {"teacher": optimizer}, done)
                schedule.step()
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if reporter is not None:
                    reporter.step(done, losses[-1])
                if checkpoint_dir is not None and (stop.signal or (checkpoint_every and done % checkpoint_every == 0
                                                                   and done < total)):
                    save_finetune_checkpoint(checkpoint_dir, model, optimizer, schedule, done, losses, settings)
                if stop.signal:
                    raise ckpt.TrainingInterrupted(stop.signal, done, checkpoint_dir)
    model.eval()
    return losses


def _resume_finetune(checkpoint_dir: str | Path | None, settings: dict[str, Any], model: nn.Module,
                     optimizer: torch.optim.Optimizer, schedule: Any, total: int,
                     log: Callable[[str], None] | None) -> tuple[list[float], Any, int]:
    """Restore a fine-tuning checkpoint written with the same ``settings``; returns its losses, the
    global RNG state to restore after the replay, and the steps to replay (nothing found: [], None, 0)."""
    from .finetune_checkpoint import finetune_checkpoint_settings, load_finetune_checkpoint

    if checkpoint_dir is None:
        return [], None, 0
    found = finetune_checkpoint_settings(checkpoint_dir)
    if found == settings:
        meta = load_finetune_checkpoint(checkpoint_dir, model, optimizer, schedule)
        replay = int(meta["steps_done"])
        if log:
            log(f"resuming the teacher's fine-tuning from the checkpoint in {checkpoint_dir} at step {replay} "
                f"of {total}")
        return list(meta["losses"]), meta["rng"], replay
    if found is not None and log:
        differ = sorted(k for k in set(found) | set(settings) if found.get(k) != settings.get(k))
        log(f"not resuming the fine-tuning checkpoint in {checkpoint_dir}: written with other settings "
            f"({', '.join(differ[:4])}); fine-tuning from the start")
    return [], None, 0


def _supervised_step(model: nn.Module, batch: dict[str, torch.Tensor], task: str,
                     optimizer: torch.optim.Optimizer) -> float:
    """One AdamW step on the batch's cross-entropy (next-token for a causal LM), gradients clipped at 1."""
    out = model(**model_inputs(batch, "teacher"))
    if task == "causal_lm":
        loss = next_token_ce(out.logits, batch["labels"])
    else:
        loss = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


class _Reporter:
    """Progress lines for a run without a bar: at most one every ``every`` seconds (the first
    after ``every`` seconds), and one after the last step; each with the mean loss since the
    previous line, the speed and the time left."""

    def __init__(self, log: Callable[[str], None], every: float, total: int, done: int):
        self.log, self.every, self.total = log, float(every), total
        self.start = self.last = time.monotonic()
        self.first, self.losses = done, []

    def step(self, done: int, loss: float) -> None:
        from .step_log import format_eta

        self.losses.append(loss)
        now = time.monotonic()
        if now - self.last < self.every and done < self.total:
            return
        rate = (done - self.first) / max(now - self.start, 1e-9)
        left = format_eta((self.total - done) / rate) if rate > 0 else "?"
        self.log(f"fine-tune teacher: step {done}/{self.total}, loss {sum(self.losses) / len(self.losses):.4f} "
                 f"(mean of the last {len(self.losses)}), {rate:.2f} steps/s, {left} left")
        self.last, self.losses = now, []


def cache_key(**settings: Any) -> str:
    """A stable short hash of JSON-serialisable settings."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached_model(key: str, build: Callable[[], nn.Module], load: Callable[[Path], nn.Module],
                 kind: str = "teachers", meta: dict | None = None) -> tuple[nn.Module, Path, bool]:
    """Return ``(model, directory, was_cached)``. On a miss ``build()`` makes the model, which is
    saved with ``save_pretrained`` (safetensors) into a temporary directory and renamed into place,
    so a killed run never leaves a half-written cache entry."""
    target = cache_dir() / kind / key
    if (target / "metakd.json").is_file():
        return load(target), target, True
    model = build()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    tmp.chmod(directory_mode())
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "metakd.json").write_text(json.dumps(meta or {}, indent=2, default=str))
        follow_umask(tmp)
        if target.exists():  # another process won the race; keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return model, target, False
