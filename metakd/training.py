"""The training loop of MetaDistiller: data checks, loaders, the quiz split, epochs and
``max_steps``, periodic evaluation, checkpoints and exact resume, and stop signals."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import data as data_mod
from .evaluate import evaluate_model
from .rng import shuffle_generators

log = logging.getLogger("metakd.distiller")


class TrainingLoopMixin:
    """``fit`` and ``evaluate`` of MetaDistiller (built on its ``step``)."""

    # ------------------------------------------------------------------ training loop
    def _pad_ids(self) -> dict[str, int]:
        def pid(m: nn.Module) -> int:
            value = getattr(getattr(m, "config", None), "pad_token_id", None)
            return int(value) if value is not None else 0
        return {"teacher": pid(self.teacher), "student": pid(self.student)}

    def _check_data(self, dataset: Sequence, what: str) -> None:
        if len(dataset) == 0:
            raise data_mod.DataError(f"{what} data set is empty")
        if self.config.task == "causal_lm":
            first = dataset[0]
            if "input_ids" not in first or "labels" not in first or torch.as_tensor(first["labels"]).dim() != 1:
                raise data_mod.DataError(
                    f"{what} data does not hold language-modelling blocks (input_ids and per-token labels; "
                    "see metakd.data.encode_lm) but task='causal_lm'")
            return
        if self.num_labels is not None:
            data_mod.check_labels(dataset, self.num_labels, f"{what} data")

    def _loader(self, data: Any, batch_size: int, generator: torch.Generator) -> Iterable:
        """Shuffled batches of ``data`` drawn with ``generator`` (a DataLoader passes through)."""
        if isinstance(data, DataLoader):
            return data
        return data_mod.loader(data, batch_size, data_mod.make_collator(self._pad_ids()), True, generator=generator)

    def _shuffle_generators(self) -> dict[str, torch.Generator]:
        """The generators that shuffle the training and quiz data (``metakd.rng``), made from the
        config's seed by the first ``fit`` and continued by later ones."""
        if getattr(self, "_shuffle", None) is None:
            self._shuffle = shuffle_generators(self.config.seed)
        return self._shuffle

    def fit(self, train_data: Any, quiz_data: Any = None, eval_data: Any = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False) -> dict[str, list]:
        """Train for ``epochs`` (or ``max_steps``). Data sets are sequences of encoded examples
        (see ``metakd.data.encode``) or DataLoaders of collated batches. When ``quiz_data`` is
        None a quiz split of ``quiz_fraction`` is carved from ``train_data`` by seed, in every
        mode, so all modes train on the same examples. Returns ``{"train": [...], "eval": [...]}``.

        With ``checkpoint_dir`` a checkpoint (``metakd.checkpoint``) is written there every
        ``checkpoint_every`` steps, at the end, and when SIGTERM or SIGINT arrives (then
        ``TrainingInterrupted`` is raised after the step in progress). ``resume=True`` continues
        from the checkpoint there (from the start when there is none); on CPU the result is bit
        for bit the one of an uninterrupted run.

        The batches are shuffled with generators the distiller owns (a second ``fit`` draws other
        batches) and dropout is seeded per step (``metakd.rng``): the global RNG is left as it was.
        """
        from . import checkpoint as ckpt

        cfg = self.config
        if not isinstance(train_data, DataLoader):
            self._check_data(train_data, "training")
            if quiz_data is None:
                train_data, quiz_data = data_mod.split_quiz(train_data, cfg.quiz_fraction, cfg.seed)
        elif quiz_data is None and cfg.meta_update != "none":
            raise ValueError("pass quiz_data when train_data is a DataLoader")
        if quiz_data is not None and not isinstance(quiz_data, DataLoader):
            self._check_data(quiz_data, "quiz")
        if eval_data is not None and not isinstance(eval_data, DataLoader):
            self._check_data(eval_data, "evaluation")

        shuffle = self._shuffle_generators()
        # where this fit starts: a checkpoint keeps it, so a resume replays the same batches
        self._fit_start = {"step": self.steps_done, **{k: g.get_state() for k, g in shuffle.items()}}
        train_loader = self._loader(train_data, cfg.batch_size, shuffle["train"])
        quiz_iter = (self._cycle(self._loader(quiz_data, cfg.quiz_batch_size or cfg.batch_size, shuffle["quiz"]))
                     if quiz_data is not None and cfg.meta_update != "none" else None)
        steps_per_epoch = len(train_loader)
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps) if steps_per_epoch else cfg.max_steps
        history: dict[str, list] = {"train": [], "eval": []}
        replay = 0
        self._data_fingerprint = ckpt.data_fingerprint(train_data) if checkpoint_dir is not None else None
        if checkpoint_dir is not None and resume:
            if ckpt.has_checkpoint(checkpoint_dir):
                meta = ckpt.load_checkpoint(checkpoint_dir, self, self._data_fingerprint)
                history, self._fit_start = meta["history"], meta["fit_start"]
                for key, generator in shuffle.items():  # the loaders have not drawn yet
                    generator.set_state(self._fit_start[key])
                # a shorter max_steps: nothing left to do
                replay = min(int(meta["steps_done"]) - self._fit_start["step"], total)
                log.warning("resuming from the checkpoint in %s at step %d of %d", checkpoint_dir, replay, total)
            else:
                log.warning("no checkpoint in %s: starting from the beginning", checkpoint_dir)
        done = replay
        bar = tqdm(total=total, initial=done, desc=f"distil ({cfg.meta_update})", disable=not cfg.progress, leave=False)
        with ckpt.StopSignals(enabled=checkpoint_dir is not None) as stop:
            for _epoch in range(max(cfg.epochs, math.ceil(total / max(steps_per_epoch, 1)))):
                for batch in train_loader:
                    if replay:  # the batches the checkpointed steps took: the seeded loaders are replayed
                        replay -= 1
                        if quiz_iter is not None:
                            next(quiz_iter)
                        continue
                    if done >= total:
                        break
                    metrics = self.step(batch, next(quiz_iter) if quiz_iter is not None else None)
                    history["train"].append(metrics)
                    done += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['student_loss']:.3f}")
                    if eval_data is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < total:
                        history["eval"].append({"step": done, **self.evaluate(eval_data)})
                    stopping = self._agreed_stop(stop.signal) if checkpoint_dir is not None else None
                    if checkpoint_dir is not None and (stopping or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
                        self._checkpoint(checkpoint_dir, history)
                    if stopping:
                        bar.close()
                        raise ckpt.TrainingInterrupted(stopping, done, checkpoint_dir)
                if done >= total:
                    break
        bar.close()
        if checkpoint_dir is not None and self.steps_done and not (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
            self._checkpoint(checkpoint_dir, history)
        if eval_data is not None:
            history["eval"] = [e for e in history["eval"] if e["step"] != done]  # a resumed run re-evaluates the end
            history["eval"].append({"step": done, **self.evaluate(eval_data)})
        return history

    def _agreed_stop(self, signal_name: str | None) -> str | None:
        """The stop signal, agreed by all processes: one that got a signal stops them all after the
        same step (a process that stopped alone would leave the others waiting in an all-reduce)."""
        dist = getattr(self, "dist", None)
        if dist is None or not dist.distributed:
            return signal_name
        flag = dist.all_reduce_mean([torch.tensor([1.0 if signal_name else 0.0], device=dist.device)])[0]
        return signal_name or ("SIGTERM" if float(flag) > 0 else None)

    def _checkpoint(self, directory: str | Path, history: dict[str, list]) -> None:
        from .checkpoint import save_checkpoint

        dist = getattr(self, "dist", None)
        if dist is None or dist.is_main:
            save_checkpoint(directory, self, history, getattr(self, "_data_fingerprint", None))
        if dist is not None:
            dist.barrier()  # nobody moves on (or exits) while the main process writes

    @staticmethod
    def _cycle(loader: Iterable) -> Iterator:
        while True:
            yield from loader

    def evaluate(self, data: Any, model: str = "student") -> dict[str, float]:
        """Accuracy, macro F1/precision/recall and mean CE loss of the student (or the teacher);
        for ``task="causal_lm"`` next-token loss and perplexity (``metakd.evaluate.evaluate_model``).
        Leaves the global RNG as it was."""
        if model not in ("student", "teacher"):
            raise ValueError(f"model must be 'student' or 'teacher', got {model!r}")
        net = self.student if model == "student" else self.teacher
        return evaluate_model(net, data, task=self.config.task, batch_size=self.config.eval_batch_size,
                              pad=self._pad_ids(), side=model, num_labels=self.num_labels,
                              lm_chunk_size=self.config.lm_chunk_size, device=self.device)
