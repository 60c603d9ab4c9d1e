"""Fine-tune a classifier on the task (a distillation teacher must know the task first), and
cache the result on disk so later runs start at once."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import data as data_mod
from . import evaluate
from .forward import model_inputs
from .losses import next_token_ce


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
        return max_steps, f"{max_steps} steps: max_steps {max_steps} stops it before the end of {epochs_text} ({full} steps)"
    if max_steps > full:
        return full, (f"{full} steps: {epochs_text} end it before max_steps {max_steps} is reached (raise epochs to "
                      "run longer)")
    return full, f"{full} steps: {epochs_text}, which is max_steps too"


def finetune_classifier(model: nn.Module, train: Sequence, *, epochs: int = 2, lr: float = 5e-5,
                        batch_size: int = 32, weight_decay: float = 0.01, seed: int = 0,
                        pad_id: int = 0, progress: bool = True, task: str = "classification",
                        max_steps: int | None = None) -> list[float]:
    """Plain supervised fine-tuning with AdamW and linear warm-up/decay; returns the step losses.

    ``task="causal_lm"`` trains on next-token cross-entropy over LM blocks (``data.encode_lm``)."""
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
    model.train()
    losses = []
    with tqdm(total=total, desc="fine-tune teacher", disable=not progress, leave=False) as bar:
        for _ in range(epochs):
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                if len(losses) >= total:
                    break
                out = model(**model_inputs(batch, "teacher"))
                if task == "causal_lm":
                    loss = next_token_ce(out.logits, batch["labels"])
                else:
                    loss = torch.nn.functional.cross_entropy(out.logits, batch["labels"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def evaluate_model(model: nn.Module, data: Sequence, batch_size: int = 64, pad_id: int = 0,
                   side: str = "teacher") -> dict[str, float]:
    """Accuracy, macro F1/precision/recall and loss of a classifier on encoded examples
    (``metakd.evaluate.evaluate_model`` for classification)."""
    return evaluate.evaluate_model(model, data, batch_size=batch_size, pad=pad_id, side=side)


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
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "metakd.json").write_text(json.dumps(meta or {}, indent=2, default=str))
        if target.exists():  # another process won the race; keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return model, target, False
