"""The training loop of MetaDistiller (``TrainingLoop``, one per ``fit``): data checks, loaders, the
quiz split, epochs and ``max_steps``, periodic evaluation, checkpoints and exact resume, and stop
signals."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import data as data_mod
from .step_log import StepLog, format_eta

log = logging.getLogger("metakd.distiller")


def best_validation(history: dict[str, list], task: str = "classification") -> dict[str, Any] | None:
    """The evaluation point with the best validation score (highest accuracy; for ``causal_lm``
    lowest loss; the earliest on ties): ``{"step", "validation": scores, "eval": scores at that
    step or None}``; None without validation points."""
    points = history.get("validation") or []
    if not points:
        return None
    if task == "causal_lm":
        best = min(points, key=lambda p: (p["loss"], p["step"]))
    else:
        best = min(points, key=lambda p: (-p["accuracy"], p["step"]))
    at = next((e for e in history.get("eval", []) if e["step"] == best["step"]), None)
    return {"step": best["step"], "validation": best, "eval": at}


_POSTFIX = {"quiz_loss": "quiz", "teacher_ce": "t_ce", "teacher_student_kl": "t_kl_s", "teacher_anchor_kl": "t_kl0"}


def _teacher_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The teacher objective's terms of a meta-step, short, for the progress bar."""
    return {short: f"{metrics[key]:.3f}" for key, short in _POSTFIX.items() if key in metrics}


@contextmanager
def _closing(steplog: StepLog | None) -> Iterator[None]:
    try:
        yield
    finally:
        if steplog is not None:
            steplog.close()


class TrainingLoop:
    """One ``fit`` of a distiller (``MetaDistiller.fit`` makes one per call): data checks, loaders,
    the quiz and validation splits, epochs and ``max_steps``, periodic evaluation, the teacher
    guard's checks, checkpoints and exact resume, stop signals. It drives the distiller through
    what the distiller offers everyone (``config``, ``state``, ``guard``, ``dist``, ``step``,
    ``evaluate``, ``pad_ids``) and hands the distiller whole to the checkpoint writer and reader and
    to the teacher tracker, which save, restore and read its models; the run's progress lives in
    ``distiller.state``, this object keeps only what belongs to its one ``fit``."""

    def __init__(self, distiller: Any, checkpoint_dir: str | Path | None = None, log_dir: str | Path | None = None):
        self.d = distiller
        self.config = distiller.config
        self.state = distiller.state
        self.checkpoint_dir = checkpoint_dir
        self.log_dir = log_dir
        self.fingerprint: dict | None = None
        """The training data's fingerprint a checkpoint keeps (with ``checkpoint_dir``)."""
        self.eval_data: Any = None
        self.validation_data: Any = None
        self.tracker: Any = None
        """The teacher tracker (``track_teacher``), or None."""
        self.history: dict[str, Any] = {}

    # ------------------------------------------------------------------ the loop
    def run(self, train_data: Any, quiz_data: Any = None, eval_data: Any = None, validation_data: Any = None,
            resume: bool = False) -> dict[str, Any]:
        """Train for ``epochs`` (or ``max_steps``) and return the history (``MetaDistiller.fit``)."""
        from . import checkpoint as ckpt

        cfg, state = self.config, self.state
        train_data, quiz_data, validation_data = self._fit_data(train_data, quiz_data, eval_data, validation_data)
        self.eval_data, self.validation_data = eval_data, validation_data
        shuffle = state.shuffle_generators()
        state.begin_fit()  # where this fit starts: a checkpoint keeps it, so a resume replays the same batches
        train_loader = self._loader(train_data, cfg.batch_size, shuffle["train"])
        quiz_iter = (_cycle(self._loader(quiz_data, self.quiz_rows(quiz_data), shuffle["quiz"]))
                     if quiz_data is not None and cfg.meta_update != "none" else None)
        steps_per_epoch = len(train_loader)
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps) if steps_per_epoch else cfg.max_steps
        state.resolve_meta_start(total)  # meta_start as a share of this fit's steps
        state.start_schedules(total)  # before a checkpoint restores their position
        if cfg.track_teacher and eval_data is not None and not isinstance(eval_data, DataLoader):
            from .teacher_stats import TeacherTracker

            self.tracker = TeacherTracker(self.d, eval_data, cfg.track_teacher)  # the initial teacher: before a resume
        if self.checkpoint_dir is not None:
            self.fingerprint = ckpt.data_fingerprint(train_data)
        history, replay = self._resume(total) if resume else (None, 0)
        self.history = history if history is not None else {
            "train": [], "eval": [], **({"validation": []} if validation_data is not None else {})}
        done = replay
        self._begin_guard(done)
        steplog = self._step_log(total, state.steps_done if resume else None)  # lines are by global step
        bar = tqdm(total=total, initial=done, desc=f"distil ({cfg.meta_update})", disable=not cfg.progress, leave=False)
        with ckpt.StopSignals(enabled=self.checkpoint_dir is not None) as stop, _closing(steplog):
            for _epoch in range(max(cfg.epochs, math.ceil(total / max(steps_per_epoch, 1)))):
                for batch in train_loader:
                    if replay:  # the batches the checkpointed steps took: the seeded loaders are replayed
                        replay -= 1
                        if quiz_iter is not None:
                            next(quiz_iter)
                        continue
                    if done >= total:
                        break
                    done += 1
                    self._train_step(batch, quiz_iter, steplog, bar, done)
                    if cfg.eval_every and done % cfg.eval_every == 0 and done < total:
                        self._evaluate_point(done)
                    self._checkpoint_or_stop(stop.signal, done, bar)
                if done >= total:
                    break
        bar.close()
        return self._finish(done)

    def _train_step(self, batch: Any, quiz_iter: Iterator | None, steplog: StepLog | None, bar: Any,
                    done: int) -> None:
        """The distiller's step on ``batch`` (and the next quiz batch), logged, and the schedules moved on."""
        state = self.state
        lrs = state.learning_rates()  # the rates this step uses
        if steplog is not None:
            steplog.begin()
        metrics = self.d.step(batch, next(quiz_iter) if quiz_iter is not None else None)
        metrics.update(lrs)
        self.history["train"].append(metrics)
        bar.update(1)
        line = self._log_step(steplog, metrics, done)  # before the schedules move: this step's rates
        state.advance_schedules(meta=bool(metrics["meta"]))  # the teacher's: after a meta-step
        bar.set_postfix(loss=f"{metrics['student_loss']:.3f}", **_teacher_postfix(metrics),
                        **({"eta": format_eta(line["eta_seconds"])} if line else {}))

    def _checkpoint_or_stop(self, signal_name: str | None, done: int, bar: Any) -> None:
        """A checkpoint every ``checkpoint_every`` steps, and one then ``TrainingInterrupted`` when a
        stop signal arrived (with a ``checkpoint_dir`` only)."""
        from .checkpoint import TrainingInterrupted

        if self.checkpoint_dir is None:
            return
        stopping = self._agreed_stop(signal_name)
        every = self.config.checkpoint_every
        if stopping or (every and done % every == 0):
            self._checkpoint()
        if stopping:
            bar.close()
            raise TrainingInterrupted(stopping, done, self.checkpoint_dir)

    # ------------------------------------------------------------------ data
    def _fit_data(self, train_data: Any, quiz_data: Any, eval_data: Any, validation_data: Any) -> tuple[Any, Any, Any]:
        """Check the data sets and carve the quiz and validation splits ``fit`` needs from the
        training data; returns (train, quiz, validation)."""
        cfg = self.config
        if not isinstance(train_data, DataLoader):
            self._check_data(train_data, "training")
            if quiz_data is None:
                train_data, quiz_data = data_mod.split_quiz(train_data, cfg.quiz_fraction, cfg.seed)
        elif quiz_data is None and cfg.meta_update != "none":
            raise ValueError("pass quiz_data when train_data is a DataLoader")
        if quiz_data is not None and not isinstance(quiz_data, DataLoader):
            self._check_data(quiz_data, "quiz")
        if isinstance(quiz_data, DataLoader) and cfg.meta_update != "none" and cfg.quiz_batches != 1:
            raise ValueError(f"quiz_batches={cfg.quiz_batches!r} draws several quiz batches' worth of examples per "
                             "meta-step from quiz data given as examples; a DataLoader's batches are its own: give "
                             "quiz_data as a sequence of encoded examples, or make the DataLoader's batches larger "
                             "and keep quiz_batches=1")
        if eval_data is not None and not isinstance(eval_data, DataLoader):
            self._check_data(eval_data, "evaluation")
        if validation_data is None and cfg.validation_fraction > 0:
            if isinstance(train_data, DataLoader):
                raise ValueError("pass validation_data when train_data is a DataLoader (validation_fraction > 0)")
            exclude = [d for d in (quiz_data, eval_data) if d is not None and not isinstance(d, DataLoader)]
            train_data, validation_data = data_mod.split_validation(train_data, cfg.validation_fraction, cfg.seed,
                                                                    exclude)
        if validation_data is not None and not isinstance(validation_data, DataLoader):
            self._check_data(validation_data, "validation")
        return train_data, quiz_data, validation_data

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
        if self.d.num_labels is not None:
            data_mod.check_labels(dataset, self.d.num_labels, f"{what} data")

    def _loader(self, data: Any, batch_size: int, generator: torch.Generator) -> Iterable:
        """Shuffled batches of ``data`` drawn with ``generator`` (a DataLoader passes through)."""
        if isinstance(data, DataLoader):
            return data
        return data_mod.loader(data, batch_size, data_mod.make_collator(self.d.pad_ids()), True, generator=generator)

    def quiz_rows(self, quiz_data: Any) -> int:
        """Rows of one meta-step's quiz batch: ``quiz_batches`` quiz batches' worth, or the whole split."""
        cfg = self.config
        if cfg.quiz_batches == "all":
            return max(1, len(quiz_data))
        return (cfg.quiz_batch_size or cfg.batch_size) * int(cfg.quiz_batches)

    # ------------------------------------------------------------------ resume and the end
    def _resume(self, total: int) -> tuple[dict[str, Any] | None, int]:
        """Restore the checkpoint in ``checkpoint_dir`` (when there is one) and set the shuffle
        generators to where its ``fit`` started; returns its history (None: starting from the
        beginning) and the number of this fit's steps it had taken, to replay."""
        from . import checkpoint as ckpt

        directory = self.checkpoint_dir
        if directory is None:
            return None, 0
        if not ckpt.has_checkpoint(directory):
            log.warning("no checkpoint in %s: starting from the beginning", directory)
            return None, 0
        state = self.state
        meta = ckpt.load_checkpoint(directory, self.d, self.fingerprint)
        state.resolve_meta_start(total)  # the share counts from where the resumed fit started
        for key, generator in state.shuffle_generators().items():  # the loaders have not drawn yet
            generator.set_state(state.fit_start[key])
        replay = min(int(meta["steps_done"]) - state.fit_start["step"], total)  # a shorter max_steps: nothing left
        log.warning("resuming from the checkpoint in %s at step %d of %d", directory, replay, total)
        return meta["history"], replay

    def _finish(self, done: int) -> dict[str, Any]:
        """The end of ``fit``: the last checkpoint, the final evaluation, the best-validation point, the
        guard's line."""
        cfg, history, guard = self.config, self.history, self.d.guard
        periodic = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
        if self.checkpoint_dir is not None and self.state.steps_done and not periodic:
            self._checkpoint()
        for key in ("eval", "validation"):  # a resumed run re-evaluates the end
            if key in history:
                history[key] = [e for e in history[key] if e["step"] != done]
        # after the checkpoint, as a killed run's: a resume (a longer max_steps) is the uninterrupted run, and
        # resuming a finished run evaluates the end again, the guard acting as it did
        self._evaluate_point(done, final=True)
        if self.validation_data is not None:
            history["best"] = best_validation(history, cfg.task)
        if guard.enabled:
            history["teacher_guard"] = guard.summary()
            line = guard.final_line()
            if line:
                log.warning(line)
        return history

    # ------------------------------------------------------------------ evaluation and the teacher guard
    def _begin_guard(self, step: int) -> None:
        """Score the teacher as given on the validation split (the guard's start; meta modes only)."""
        guard = self.d.guard
        if not guard.enabled:
            return
        if self.validation_data is None:
            if guard.start_accuracy is None:
                log.warning("teacher guard: no validation split (set validation_fraction > 0), so it cannot watch "
                            "the teacher in this run")
            return
        guard.begin(self._teacher_accuracy, step)

    def _teacher_accuracy(self) -> float:
        """What the teacher guard watches: the teacher's accuracy on the validation split (a causal LM's
        next-token accuracy)."""
        scores = self.d.evaluate(self.validation_data, model="teacher")
        return scores["next_token_accuracy" if self.config.task == "causal_lm" else "accuracy"]

    def _evaluate_point(self, step: int, final: bool = False) -> None:
        """Score the student on the evaluation and validation data (and the teacher, with a tracker) at
        ``step``; before the ``final`` point, only the first ``eval_subset`` evaluation examples."""
        eval_data, validation_data = self.eval_data, self.validation_data
        if eval_data is not None:
            n = self.config.eval_subset
            if not final and n is not None and not isinstance(eval_data, DataLoader) and n < len(eval_data):
                eval_data = [eval_data[i] for i in range(n)]
            point = {"step": step, **self.d.evaluate(eval_data)}
            if not isinstance(eval_data, DataLoader):
                point["eval_examples"] = len(eval_data)
            if self.tracker is not None:
                point.update(self.tracker.stats())
            self.history["eval"].append(point)
        if validation_data is not None:
            point = {"step": step, **self.d.evaluate(validation_data)}
            point.update(self.d.guard.check(step, self._teacher_accuracy, self.state.teacher_optimizer,
                                            self.state.teacher_scheduler))
            self.history["validation"].append(point)

    # ------------------------------------------------------------------ logs, checkpoints, processes
    def _step_log(self, total: int, resume_step: int | None) -> StepLog | None:
        """The step log of this run in ``log_dir`` (the main process only); None without one."""
        if self.log_dir is None or not self.d.dist.is_main:
            return None
        return StepLog(self.log_dir, self.d.device, total, self.config.report_to, resume_step)

    def _log_step(self, steplog: StepLog | None, metrics: dict[str, float], done: int) -> dict | None:
        if steplog is None:
            return None
        return steplog.end(metrics, {"student": self.state.student_optimizer, "teacher": self.state.teacher_optimizer},
                           done)

    def _agreed_stop(self, signal_name: str | None) -> str | None:
        """The stop signal, agreed by all processes: one that got a signal stops them all after the
        same step (a process that stopped alone would leave the others waiting in an all-reduce)."""
        dist = self.d.dist
        if not dist.distributed:
            return signal_name
        flag = dist.all_reduce_mean([torch.tensor([1.0 if signal_name else 0.0], device=dist.device)])[0]
        return signal_name or ("SIGTERM" if float(flag) > 0 else None)

    def _checkpoint(self) -> None:
        from .checkpoint import save_checkpoint

        dist = self.d.dist
        if dist.is_main:
            save_checkpoint(self.checkpoint_dir, self.d, self.history, self.fingerprint)
        dist.barrier()  # nobody moves on (or exits) while the main process writes


def _cycle(loader: Iterable) -> Iterator:
    while True:
        yield from loader


__all__ = ["TrainingLoop", "best_validation"]
