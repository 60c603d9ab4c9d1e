"""The training loop of MetaDistiller: data checks, loaders, the quiz split, epochs and
``max_steps``, periodic evaluation, checkpoints and exact resume, and stop signals."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import data as data_mod
from .evaluate import evaluate_model
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


class TrainingLoopMixin:
    """``fit`` and ``evaluate`` of MetaDistiller (built on its ``step``); what a run's progress is
    (steps, schedules, shuffle generators) lives in the distiller's ``state``."""

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

    def fit(self, train_data: Any, quiz_data: Any = None, eval_data: Any = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False,
            validation_data: Any = None, log_dir: str | Path | None = None) -> dict[str, Any]:
        """Train for ``epochs`` (or ``max_steps``). Data sets are sequences of encoded examples
        (see ``metakd.data.encode``) or DataLoaders of collated batches. When ``quiz_data`` is
        None a quiz split of ``quiz_fraction`` is carved from ``train_data`` by seed, in every
        mode, so all modes train on the same examples. Returns ``{"train": [...], "eval": [...]}``.

        With ``validation_fraction`` > 0 (and no ``validation_data``) a validation split is carved
        from the rest by seed (``metakd.data.split_validation``: unique by text, disjoint from the
        quiz and evaluation data). It is scored wherever ``eval_data`` is (every ``eval_every``
        steps and at the end), into ``history["validation"]``, and ``history["best"]`` holds the
        best-validation point (``best_validation``). ``track_teacher`` adds the teacher's figures
        (``metakd.teacher_stats``) to every ``history["eval"]`` point. The learning-rate schedules
        (``student_lr_schedule``, ``teacher_lr_schedule``) run over this call's training steps.

        With ``checkpoint_dir`` a checkpoint (``metakd.checkpoint``) is written there every
        ``checkpoint_every`` steps, at the end, and when SIGTERM or SIGINT arrives (then
        ``TrainingInterrupted`` is raised after the step in progress). ``resume=True`` continues
        from the checkpoint there (from the start when there is none); on CPU the result is bit
        for bit the one of an uninterrupted run.

        With ``log_dir`` each step's scalars go to ``log_dir/log.jsonl`` (and TensorBoard events to
        ``log_dir/tensorboard`` with ``report_to="tensorboard"``; ``metakd.step_log``), and the
        progress bar shows an ETA from the mean step time.

        The batches are shuffled with generators the distiller owns (a second ``fit`` draws other
        batches) and dropout is seeded per step (``metakd.rng``): the global RNG is left as it was.
        """
        from . import checkpoint as ckpt

        cfg, state = self.config, self.state
        train_data, quiz_data, validation_data = self._fit_data(train_data, quiz_data, eval_data, validation_data)
        shuffle = state.shuffle_generators()
        state.begin_fit()  # where this fit starts: a checkpoint keeps it, so a resume replays the same batches
        train_loader = self._loader(train_data, cfg.batch_size, shuffle["train"])
        quiz_iter = (self._cycle(self._loader(quiz_data, self._quiz_rows(quiz_data), shuffle["quiz"]))
                     if quiz_data is not None and cfg.meta_update != "none" else None)
        steps_per_epoch = len(train_loader)
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps) if steps_per_epoch else cfg.max_steps
        state.resolve_meta_start(total)  # meta_start as a share of this fit's steps
        state.start_schedules(total)  # before a checkpoint restores their position
        tracker = None
        if cfg.track_teacher and eval_data is not None and not isinstance(eval_data, DataLoader):
            from .teacher_stats import TeacherTracker

            tracker = TeacherTracker(self, eval_data, cfg.track_teacher)  # the initial teacher: before a resume
        fingerprint = ckpt.data_fingerprint(train_data) if checkpoint_dir is not None else None
        history, replay = self._resume(checkpoint_dir, fingerprint, total) if resume else (None, 0)
        if history is None:
            history = {"train": [], "eval": [], **({"validation": []} if validation_data is not None else {})}
        done = replay
        self._begin_guard(validation_data, done)
        steplog = self._step_log(log_dir, total, state.steps_done if resume else None)  # lines are by global step
        bar = tqdm(total=total, initial=done, desc=f"distil ({cfg.meta_update})", disable=not cfg.progress, leave=False)
        with ckpt.StopSignals(enabled=checkpoint_dir is not None) as stop, _closing(steplog):
            for _epoch in range(max(cfg.epochs, math.ceil(total / max(steps_per_epoch, 1)))):
                for batch in train_loader:
                    if replay:  # the batches the checkpointed steps took: the seeded loaders are replayed
                        replay -= 1
                        if quiz_iter is not None:
                            next(quiz_iter)
                        continue
                    if done >= total:
                        break
                    lrs = state.learning_rates()  # the rates this step uses
                    if steplog is not None:
                        steplog.begin()
                    metrics = self.step(batch, next(quiz_iter) if quiz_iter is not None else None)
                    metrics.update(lrs)
                    history["train"].append(metrics)
                    done += 1
                    bar.update(1)
                    line = self._log_step(steplog, metrics, done)  # before the schedules move: this step's rates
                    state.advance_schedules(meta=bool(metrics["meta"]))  # the teacher's: after a meta-step
                    bar.set_postfix(loss=f"{metrics['student_loss']:.3f}", **_teacher_postfix(metrics),
                                    **({"eta": format_eta(line["eta_seconds"])} if line else {}))
                    if cfg.eval_every and done % cfg.eval_every == 0 and done < total:
                        self._evaluate_point(done, history, eval_data, validation_data, tracker)
                    stopping = self._agreed_stop(stop.signal) if checkpoint_dir is not None else None
                    if checkpoint_dir is not None and (stopping or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
                        self._checkpoint(checkpoint_dir, history, fingerprint)
                    if stopping:
                        bar.close()
                        raise ckpt.TrainingInterrupted(stopping, done, checkpoint_dir)
                if done >= total:
                    break
        bar.close()
        return self._finish(history, done, eval_data, validation_data, tracker, checkpoint_dir, fingerprint)

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

    def _resume(self, checkpoint_dir: str | Path | None, fingerprint: dict | None,
                total: int) -> tuple[dict[str, Any] | None, int]:
        """Restore the checkpoint in ``checkpoint_dir`` (when there is one) and set the shuffle
        generators to where its ``fit`` started; returns its history (None: starting from the
        beginning) and the number of this fit's steps it had taken, to replay."""
        from . import checkpoint as ckpt

        if checkpoint_dir is None:
            return None, 0
        if not ckpt.has_checkpoint(checkpoint_dir):
            log.warning("no checkpoint in %s: starting from the beginning", checkpoint_dir)
            return None, 0
        state = self.state
        meta = ckpt.load_checkpoint(checkpoint_dir, self, fingerprint)
        state.resolve_meta_start(total)  # the share counts from where the resumed fit started
        for key, generator in state.shuffle_generators().items():  # the loaders have not drawn yet
            generator.set_state(state.fit_start[key])
        replay = min(int(meta["steps_done"]) - state.fit_start["step"], total)  # a shorter max_steps: nothing left
        log.warning("resuming from the checkpoint in %s at step %d of %d", checkpoint_dir, replay, total)
        return meta["history"], replay

    def _finish(self, history: dict[str, Any], done: int, eval_data: Any, validation_data: Any, tracker: Any,
                checkpoint_dir: str | Path | None, fingerprint: dict | None) -> dict[str, Any]:
        """The end of ``fit``: the last checkpoint, the final evaluation, the best-validation point, the
        guard's line."""
        cfg = self.config
        periodic = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
        if checkpoint_dir is not None and self.state.steps_done and not periodic:
            self._checkpoint(checkpoint_dir, history, fingerprint)
        for key in ("eval", "validation"):  # a resumed run re-evaluates the end
            if key in history:
                history[key] = [e for e in history[key] if e["step"] != done]
        # after the checkpoint, as a killed run's: a resume (a longer max_steps) is the uninterrupted run, and
        # resuming a finished run evaluates the end again, the guard acting as it did
        self._evaluate_point(done, history, eval_data, validation_data, tracker, final=True)
        if validation_data is not None:
            history["best"] = best_validation(history, cfg.task)
        if self.guard.enabled:
            history["teacher_guard"] = self.guard.summary()
            line = self.guard.final_line()
            if line:
                log.warning(line)
        return history

    def _quiz_rows(self, quiz_data: Any) -> int:
        """Rows of one meta-step's quiz batch: ``quiz_batches`` quiz batches' worth, or the whole split."""
        cfg = self.config
        if cfg.quiz_batches == "all":
            return max(1, len(quiz_data))
        return (cfg.quiz_batch_size or cfg.batch_size) * int(cfg.quiz_batches)

    def _begin_guard(self, validation_data: Any, step: int) -> None:
        """Score the teacher as given on the validation split (the guard's start; meta modes only)."""
        if not self.guard.enabled:
            return
        if validation_data is None:
            if self.guard.start_accuracy is None:
                log.warning("teacher guard: no validation split (set validation_fraction > 0), so it cannot watch "
                            "the teacher in this run")
            return
        self.guard.begin(lambda: self._teacher_accuracy(validation_data), step)

    def _teacher_accuracy(self, data: Any) -> float:
        """What the teacher guard watches: the teacher's accuracy on ``data`` (a causal LM's next-token
        accuracy)."""
        scores = self.evaluate(data, model="teacher")
        return scores["next_token_accuracy" if self.config.task == "causal_lm" else "accuracy"]

    def _evaluate_point(self, step: int, history: dict[str, Any], eval_data: Any, validation_data: Any,
                        tracker: Any, final: bool = False) -> None:
        """Score the student on the evaluation and validation data (and the teacher, with a tracker) at
        ``step``; before the ``final`` point, only the first ``eval_subset`` evaluation examples."""
        if eval_data is not None:
            n = self.config.eval_subset
            if not final and n is not None and not isinstance(eval_data, DataLoader) and n < len(eval_data):
                eval_data = [eval_data[i] for i in range(n)]
            point = {"step": step, **self.evaluate(eval_data)}
            if not isinstance(eval_data, DataLoader):
                point["eval_examples"] = len(eval_data)
            if tracker is not None:
                point.update(tracker.stats())
            history["eval"].append(point)
        if validation_data is not None:
            point = {"step": step, **self.evaluate(validation_data)}
            point.update(self.guard.check(step, lambda: self._teacher_accuracy(validation_data),
                                          self.state.teacher_optimizer, self.state.teacher_scheduler))
            history["validation"].append(point)


    def _step_log(self, log_dir: str | Path | None, total: int, resume_step: int | None) -> StepLog | None:
        """The step log of this run in ``log_dir`` (the main process only); None without one."""
        dist = getattr(self, "dist", None)
        if log_dir is None or (dist is not None and not dist.is_main):
            return None
        return StepLog(log_dir, self.device, total, self.config.report_to, resume_step)

    def _log_step(self, steplog: StepLog | None, metrics: dict[str, float], done: int) -> dict | None:
        if steplog is None:
            return None
        return steplog.end(metrics, {"student": self.state.student_optimizer, "teacher": self.state.teacher_optimizer},
                           done)

    def _agreed_stop(self, signal_name: str | None) -> str | None:
        """The stop signal, agreed by all processes: one that got a signal stops them all after the
        same step (a process that stopped alone would leave the others waiting in an all-reduce)."""
        dist = getattr(self, "dist", None)
        if dist is None or not dist.distributed:
            return signal_name
        flag = dist.all_reduce_mean([torch.tensor([1.0 if signal_name else 0.0], device=dist.device)])[0]
        return signal_name or ("SIGTERM" if float(flag) > 0 else None)

    def _checkpoint(self, directory: str | Path, history: dict[str, list], fingerprint: dict | None) -> None:
        from .checkpoint import save_checkpoint

        dist = getattr(self, "dist", None)
        if dist is None or dist.is_main:
            save_checkpoint(directory, self, history, fingerprint)
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
