"""MetaDistiller: plain KD, or learning to teach with a LoRA or full teacher meta-update."""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import data as data_mod
from .config import DistillConfig
from .distributed import Dist
from .evaluate import evaluate_classifier, evaluate_lm
from .forward import Outputs, blocks_path, checkpointed_blocks, model_inputs, run
from .metagrad import MetaProblem, MetaResult, meta_gradient
from .metagrad.base import NullTimer
from .models import (ModelError, attach_lora, attach_student_lora, count_parameters, find_layer_list, has_lora,
                     meta_parameters, use_eager_attention)
from .objective import DistillStudent, Objective
from .quantization import check_meta_update
from .vocab import shared_vocab_size

log = logging.getLogger(__name__)


def make_optimizer(name: str, params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _num_labels(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "num_labels", None)


def _require_lm_head(name: str, model: nn.Module) -> None:
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get) or get() is None:
        raise ModelError(f"task='causal_lm' needs causal language models (AutoModelForCausalLM); the {name} is a "
                         f"{type(model).__name__} without an output (LM) head")


def _real_tokens(inputs: Mapping[str, torch.Tensor]) -> int:
    """Input tokens that are not padding (all of them without an attention mask)."""
    mask = inputs.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())


def resolve_feature_layers(layers: Mapping[int, int], n_student: int, n_teacher: int) -> dict[int, int]:
    """``feature_layers`` with negative indices counted from the end (-1: the last hidden state,
    the output of the last block); raises ModelError for an index out of range."""
    out = {}
    for s, t in layers.items():
        s_abs, t_abs = (s + n_student + 1 if s < 0 else s), (t + n_teacher + 1 if t < 0 else t)
        if not 0 <= s_abs <= n_student or not 0 <= t_abs <= n_teacher:
            raise ModelError(f"feature_layers {s} -> {t} out of range: the student has hidden states "
                             f"0..{n_student} (or -1..-{n_student + 1}), the teacher 0..{n_teacher}")
        out[s_abs] = t_abs
    return out


def _hidden_width(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "hidden_size", None)


class NumericalError(RuntimeError):
    """``max_bad_steps`` steps in a row had a NaN/inf loss or gradient (each was skipped, never
    applied); the message names the quantity and the likely causes with the run's settings."""


def _finite(value: float | torch.Tensor | Sequence[torch.Tensor | None]) -> bool:
    """Whether a loss (a float) or every tensor of a list of gradients is free of NaN and inf
    (one host sync for the list)."""
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    tensors = [value] if isinstance(value, torch.Tensor) else [t for t in value if t is not None]
    if not tensors:
        return True
    device = tensors[0].device
    return bool(torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all())


def _non_finite(quantities: Sequence[tuple[str, Any]]) -> tuple[str, ...]:
    """The names of the (name, value) pairs whose value holds a NaN or inf, in order."""
    return tuple(name for name, value in quantities if not _finite(value))


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


class MetaDistiller:
    """Distil ``teacher`` into ``student`` with a teacher that learns to teach.

    ``teacher`` and ``student`` are Hugging Face models (or any ``nn.Module`` whose output has
    ``.logits``). In ``meta_update="lora"`` mode the teacher gets LoRA adapters (unless it has
    some already) and only those receive the meta-gradient; ``"full"`` trains every teacher
    weight; ``"none"`` is plain KD with a frozen teacher. ``d.teacher`` and ``d.student`` are the
    live models.

    ``timer`` (e.g. ``metakd.telemetry.PhaseTimer(device)``) times the phases of every step
    (teacher_forward, pilot, quiz, directional_derivative, teacher_backward, teacher_step,
    student_step); ``step`` then reports them as ``time_<phase>`` seconds, plus ``cpu_<phase>``
    CPU seconds, ``mem_<phase>`` peak bytes and ``energy_<phase>`` joules where the timer tracks
    them (``PhaseTimer(device, memory=True, energy=EnergyMeter())``).

    ``dist`` (default ``Dist.from_env()``: one process unless launched by ``accelerate launch`` or
    ``torchrun``) makes the run data-parallel: each ``step`` takes this process's slice of the
    global batches and averages every gradient over the processes (``metakd.distributed``).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, config: DistillConfig | None = None,
                 device: str | torch.device | None = None, timer: Any = None, dist: Dist | None = None):
        self.config = cfg = config or DistillConfig()
        cfg.validate()
        self.dist = dist if dist is not None else Dist.from_env()
        self.dist.check_config(cfg)  # batch sizes divisible by the processes; no 'higher' across processes
        check_meta_update(teacher, cfg.meta_update)  # a quantized teacher: LoRA meta-update only
        if device is None and self.dist.distributed:
            device = self.dist.device  # one GPU per process (or the CPU)
        self.device = torch.device(device) if device is not None else next(student.parameters()).device
        self.vocab_size = None
        if cfg.task == "causal_lm":
            for name, model in (("teacher", teacher), ("student", student)):
                _require_lm_head(name, model)
            self.vocab_size = shared_vocab_size(teacher, student, cfg.truncate_vocab)
            self.num_labels = None
        else:
            t_labels, s_labels = _num_labels(teacher), _num_labels(student)
            if t_labels is not None and s_labels is not None and t_labels != s_labels:
                raise ModelError(f"teacher has {t_labels} labels but the student has {s_labels}")
            self.num_labels = s_labels or t_labels

        # LoRA adapters and feature projections start from random weights: seed them by config,
        # so a run is reproducible from its seed alone
        torch.manual_seed(cfg.seed)
        if cfg.meta_update == "lora" and not has_lora(teacher):
            teacher = attach_lora(teacher, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        self.teacher = teacher.to(self.device)
        self.phi = meta_parameters(self.teacher, cfg.meta_update)
        if cfg.student_lora and not has_lora(student):
            student = attach_student_lora(student, cfg.student_lora_r, cfg.student_lora_alpha, 0.0,
                                          cfg.student_lora_target_modules)
        if cfg.meta_update != "none" and cfg.meta_grad in ("higher", "jvp"):
            # fused SDPA kernels have no double backward (higher) and no forward derivative (jvp)
            use_eager_attention(student)
        self.timer = timer

        feature_layers = self._check_feature_layers(teacher, student, cfg.feature_layers or {})
        t_width, s_width = _hidden_width(self.teacher), _hidden_width(student)
        self._student = DistillStudent(
            student.to(self.device), feature_layers,
            teacher_widths={t: t_width for t in feature_layers.values()} if t_width else None,
            student_widths={s: s_width for s in feature_layers} if s_width else None,
        ).to(self.device)
        self.teacher_blocks = (blocks_path(self.teacher)
                               if feature_layers or (cfg.teacher_checkpointing and cfg.meta_update != "none") else None)
        self.objective = Objective(cfg.temperature, cfg.alpha, feature_layers, cfg.feature_weight,
                                   cfg.divergence, cfg.jsd_beta, task=cfg.task, lm_chunk_size=cfg.lm_chunk_size,
                                   vocab_size=self.vocab_size)

        self.student_params = [p for p in self._student.parameters() if p.requires_grad]
        if not self.student_params:
            raise ModelError("the student has no trainable parameters")
        self.student_optimizer = make_optimizer(cfg.student_optimizer, self.student_params, cfg.student_lr,
                                                cfg.weight_decay)
        self.teacher_optimizer = (make_optimizer(cfg.teacher_optimizer, self.phi, cfg.teacher_lr, cfg.weight_decay)
                                  if self.phi else None)
        self.steps_done = 0

    # ------------------------------------------------------------------ the live models
    @property
    def student(self) -> nn.Module:
        return self._student.model

    @property
    def student_module(self) -> DistillStudent:
        """The student with its feature projections: everything the student optimizer trains."""
        return self._student

    def trainable_teacher_parameters(self) -> int:
        return count_parameters(self.phi)

    @staticmethod
    def _check_feature_layers(teacher: nn.Module, student: nn.Module, layers: Mapping[int, int]) -> dict[int, int]:
        if not layers:
            return {}
        return resolve_feature_layers(layers, len(find_layer_list(student)[1]), len(find_layer_list(teacher)[1]))

    # ------------------------------------------------------------------ one step
    @property
    def timer(self) -> Any:
        return self._timer

    @timer.setter
    def timer(self, value: Any) -> None:
        self._timer = value if value is not None else NullTimer()

    def teacher_outputs(self, batch: Mapping[str, Any], checkpointed: bool = False) -> Outputs:
        """Teacher logits and the hidden states the feature loss reads; with ``checkpointed`` the
        blocks keep only their inputs for the backward (see ``teacher_checkpointing``)."""
        layers = set(self.objective.feature_layers.values())
        with self.timer.phase("teacher_forward"):
            if checkpointed and torch.is_grad_enabled():
                with checkpointed_blocks(self.teacher, self.teacher_blocks):
                    return run(self.teacher, model_inputs(batch, "teacher"), self.teacher_blocks, layers)
            return run(self.teacher, model_inputs(batch, "teacher"), self.teacher_blocks, layers)

    def _average_student_grads(self, loss: torch.Tensor) -> torch.Tensor:
        """Data-parallel runs: replace the student's gradients (after ``loss.backward()`` on this
        process's shard) and ``loss`` by their means over the processes, in one all-reduce. A
        parameter no process has a gradient for keeps ``grad=None``, as in one process."""
        if not self.dist.distributed:
            return loss
        params = self.student_params
        has = torch.tensor([p.grad is not None for p in params], dtype=loss.dtype, device=loss.device)
        loss_t, has, *grads = self.dist.all_reduce_mean(
            [loss.detach(), has, *[p.grad if p.grad is not None else torch.zeros_like(p) for p in params]])
        for p, g, used in zip(params, grads, has.tolist()):
            p.grad = g if used else None
        return loss_t

    def step(self, batch: Mapping[str, Any], quiz_batch: Mapping[str, Any] | None = None) -> dict[str, float]:
        """One training step: a meta-step (pilot, quiz, teacher update, student update) when the
        mode and ``meta_every`` call for one, else a plain KD step. Returns floats."""
        batch, quiz_batch = self.dist.shard(batch), self.dist.shard(quiz_batch)  # this process's rows
        cfg = self.config
        is_meta = cfg.meta_update != "none" and self.steps_done % cfg.meta_every == 0
        if is_meta and quiz_batch is None:
            raise ValueError(f"meta_update={cfg.meta_update!r} needs a quiz_batch for the meta-step")
        batch = _to_device(batch, self.device)
        self.teacher.eval()
        self._student.train()
        timing = not isinstance(self.timer, NullTimer)
        if timing:
            self.timer.reset()
        start = time.perf_counter()
        metrics: dict[str, float] = {"step": float(self.steps_done), "meta": float(is_meta)}
        self._step_bad = ()  # what this step finds NaN/inf (_student_step, _meta_update)
        if is_meta:
            metrics.update(self._meta_update(batch, _to_device(quiz_batch, self.device)))
        else:
            metrics["student_loss"] = self._student_step(batch)
        metrics["seconds"] = time.perf_counter() - start
        if timing:
            metrics.update({f"time_{k}": v for k, v in self.timer.totals().items()})
            for prefix, read in (("cpu", "cpu_seconds"), ("mem", "peaks"), ("energy", "energy")):
                values = getattr(self.timer, read, dict)()  # a timer with only phase/totals/reset has none
                metrics.update({f"{prefix}_{k}": float(v) for k, v in values.items() if v is not None})
        self.steps_done += 1
        self._count_bad_step(metrics)  # sets metrics["skipped"]; too many bad steps in a row raise NumericalError
        return metrics

    def _student_step(self, batch: Mapping[str, Any]) -> float:
        with torch.no_grad():
            t_out = self.teacher_outputs(batch)
        with self.timer.phase("student_step"):
            loss = self.objective.inner(self._student(batch), t_out, batch)
            self.student_optimizer.zero_grad(set_to_none=True)
            loss.backward()  # also for a NaN/inf loss: every step runs the same backward
            loss = self._average_student_grads(loss)  # data-parallel: the global batch's gradient and loss
            value = float(loss.detach())
            bad = _non_finite([("student loss", value), ("student gradient", [p.grad for p in self.student_params])])
            if bad:  # skip: never step on a NaN/inf loss or gradient
                self._step_bad += bad
                self.student_optimizer.zero_grad(set_to_none=True)
            else:
                self.student_optimizer.step()
        return value

    def meta_gradient(self, batch: Mapping[str, Any], quiz_batch: Mapping[str, Any]) -> MetaResult:
        """The meta-gradient ``∇_φ L_quiz`` of this batch and quiz batch with the configured backend,
        without stepping anything (the teacher forward, pilot and quiz only)."""
        cfg = self.config
        if not self.phi:
            raise ValueError("meta_update='none' has no teacher meta parameters")
        batch, quiz_batch = _to_device(batch, self.device), _to_device(quiz_batch, self.device)
        self.teacher.eval()
        self._student.train()
        with torch.enable_grad():
            t_out = self.teacher_outputs(batch, checkpointed=cfg.teacher_checkpointing)  # attached to φ
            return meta_gradient(cfg.meta_grad, MetaProblem(
                student=self._student, params=self.student_params, objective=self.objective,
                teacher_out=t_out, batch=batch, quiz_batch=quiz_batch, phi=self.phi,
                pilot_lr=cfg.pilot_lr, unroll_steps=cfg.unroll_steps, pilot_optimizer=cfg.pilot_optimizer,
                fd_epsilon=cfg.fd_epsilon, timer=self.timer,
                reduce=self.dist.all_reduce_mean if self.dist.distributed else None,
            ))

    def _meta_update(self, batch: Mapping[str, Any], quiz_batch: Mapping[str, Any]) -> dict[str, float]:
        cfg = self.config
        result = self.meta_gradient(batch, quiz_batch)
        bad = _non_finite([("inner loss", result.inner_loss), ("pilot gradient", result.pilot_grads),
                           ("quiz loss", result.quiz_loss), ("meta-gradient", result.phi_grads)])
        if bad:  # skip the whole step before anything is applied: neither the teacher nor the student moves
            self._step_bad += bad
            return {"inner_loss": result.inner_loss, "quiz_loss": result.quiz_loss, "teacher_grad_norm": math.nan,
                    "student_loss": result.inner_loss}
        with self.timer.phase("teacher_step"):
            for p, g in zip(self.phi, result.phi_grads):
                p.grad = g
            grad_norm = float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in result.phi_grads])))
            if cfg.teacher_grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.phi, cfg.teacher_grad_clip)
            self.teacher_optimizer.step()
            self.teacher_optimizer.zero_grad(set_to_none=True)

        out = {"inner_loss": result.inner_loss, "quiz_loss": result.quiz_loss, "teacher_grad_norm": grad_norm}
        if cfg.pilot == "restore":
            out["student_loss"] = self._student_step(batch)
        else:
            with self.timer.phase("student_step"):
                for p, g in zip(self.student_params, result.pilot_grads):
                    p.grad = g
                self.student_optimizer.step()
                self.student_optimizer.zero_grad(set_to_none=True)
            out["student_loss"] = result.inner_loss
        return out

    # ------------------------------------------------------------------ numerical guards
    skipped_steps: int = 0
    """Steps skipped in all for a NaN/inf loss or gradient (``step`` reports ``skipped`` 1.0)."""
    bad_in_a_row: int = 0
    """Skipped steps in a row up to the last step (a good step resets it); at ``max_bad_steps`` the
    run stops with NumericalError."""
    _step_bad: tuple[str, ...] = ()   # what the current step found NaN/inf
    _streak_bad: tuple[str, ...] = ()  # what the current run of bad steps found NaN/inf

    def _count_bad_step(self, metrics: dict[str, float]) -> None:
        """Count, log and mark (``metrics["skipped"]``) a step whose update was skipped for a NaN/inf
        loss or gradient; raise NumericalError when ``max_bad_steps`` are bad in a row."""
        bad, self._step_bad = self._step_bad, ()
        metrics["skipped"] = float(bool(bad))
        if not bad:
            self.bad_in_a_row, self._streak_bad = 0, ()
            return
        cfg = self.config
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        self._streak_bad += tuple(b for b in bad if b not in self._streak_bad)
        step = int(metrics["step"])
        if not metrics["meta"]:
            kept = "the student not updated"
        elif bad[0] in ("student loss", "student gradient"):  # pilot="restore": the teacher stepped already
            kept = "the student not updated (the teacher's meta-update was applied)"
        else:
            kept = "neither the teacher nor the student updated"
        log.warning("step %d skipped: %s NaN/inf, %s (%d bad in a row, %d in all; the run stops at "
                    "max_bad_steps=%d in a row)", step, _join(bad), kept, self.bad_in_a_row, self.skipped_steps,
                    cfg.max_bad_steps)
        if self.bad_in_a_row < cfg.max_bad_steps:
            return
        n, what = self.bad_in_a_row, self._streak_bad
        causes = [f"student_lr {cfg.student_lr} too high ({cfg.student_optimizer})",
                  f"temperature {cfg.temperature} too low (soft labels overflow)"]
        if cfg.meta_update != "none":
            causes += [f"teacher_lr {cfg.teacher_lr} too high",
                       f"pilot_lr {cfg.pilot_lr} too large (the pilot step diverges; meta_update={cfg.meta_update!r})"]
        raise NumericalError(
            f"{_join(what)} {'was' if len(what) == 1 else 'were'} NaN/inf in {n} steps in a row "
            f"(steps {step - n + 1}-{step}); likely causes: {', '.join(causes)}, or NaN/inf in the data or the "
            f"teacher's outputs. Lower the learning rates or raise the temperature (each bad step was skipped; "
            f"max_bad_steps={cfg.max_bad_steps} in a row stop the run)")

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

    def _loader(self, data: Any, batch_size: int, shuffle: bool, seed: int) -> Iterable:
        if isinstance(data, DataLoader):
            return data
        return data_mod.loader(data, batch_size, data_mod.make_collator(self._pad_ids()), shuffle, seed)

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
        """
        from . import checkpoint as ckpt

        cfg = self.config
        torch.manual_seed(cfg.seed)
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

        train_loader = self._loader(train_data, cfg.batch_size, shuffle=True, seed=cfg.seed)
        quiz_iter = (self._cycle(self._loader(quiz_data, cfg.quiz_batch_size or cfg.batch_size, True, cfg.seed + 1))
                     if quiz_data is not None and cfg.meta_update != "none" else None)
        steps_per_epoch = len(train_loader)
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps) if steps_per_epoch else cfg.max_steps
        history: dict[str, list] = {"train": [], "eval": []}
        replay, rng = 0, None
        self._data_fingerprint = ckpt.data_fingerprint(train_data) if checkpoint_dir is not None else None
        if checkpoint_dir is not None and resume:
            if ckpt.has_checkpoint(checkpoint_dir):
                meta = ckpt.load_checkpoint(checkpoint_dir, self, self._data_fingerprint)
                history, rng = meta["history"], meta["rng"]
                replay = min(int(meta["steps_done"]), total)  # a shorter max_steps: nothing left to do
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
                        if not replay:
                            ckpt.restore_rng(rng)
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
        for ``task="causal_lm"`` next-token loss and perplexity (``evaluate.evaluate_lm``)."""
        if model not in ("student", "teacher"):
            raise ValueError(f"model must be 'student' or 'teacher', got {model!r}")
        # the loader draws its base seed from the global RNG: evaluating must not shift training's stream
        with torch.random.fork_rng(devices=[]):
            return self._evaluate(data, model)

    def _evaluate(self, data: Any, model: str) -> dict[str, float]:
        net = self.student if model == "student" else self.teacher
        side = model
        was_training = net.training
        net.eval()
        try:
            batches = (_to_device(b, self.device)
                       for b in self._loader(data, self.config.eval_batch_size, shuffle=False, seed=0))
            if self.config.task == "causal_lm":
                return evaluate_lm(lambda b: net(**model_inputs(b, side)).logits, batches, self.config.lm_chunk_size)
            return evaluate_classifier(lambda b: net(**model_inputs(b, side)).logits, batches, self.num_labels,
                                       count_tokens=lambda b: _real_tokens(model_inputs(b, side)))
        finally:
            net.train(was_training)


    def save(self, directory: str | Path, tokenizer: Any = None, student_tokenizer: Any = None) -> Path:
        """Save the result with the Hugging Face / peft APIs, safetensors only, atomically (a crash
        mid-save leaves the previous save intact):

        - ``student/``: the distilled student (LoRA adapters merged in when ``student_lora``),
          reloadable with ``AutoModel*.from_pretrained``; ``student_adapters/`` holds the bare
          adapters too (``PeftModel.from_pretrained`` on the original student);
        - ``teacher_adapters/`` (lora mode: ``PeftModel.from_pretrained(base_teacher, ...)``) or
          ``teacher/`` (full mode: the whole meta-updated teacher); nothing for plain KD;
        - ``feature_projections.safetensors`` when feature distillation learned projections;
        - ``distill_config.yaml``; ``tokenizer`` in ``teacher*/`` and in ``student/`` (where
          ``student_tokenizer``, when the student tokenizes differently, takes its place).
        """
        from safetensors.torch import save_file

        from .atomic import atomic_directory

        target = Path(directory)
        with atomic_directory(target) as tmp:
            student = self.student
            if has_lora(student):
                student.save_pretrained(str(tmp / "student_adapters"), safe_serialization=True)
                student = copy.deepcopy(student).merge_and_unload()
            student.save_pretrained(str(tmp / "student"), safe_serialization=True)
            teacher_dir = None
            if self.config.meta_update == "lora":
                teacher_dir = tmp / "teacher_adapters"
            elif self.config.meta_update == "full":
                teacher_dir = tmp / "teacher"
            if teacher_dir is not None:
                self.teacher.save_pretrained(str(teacher_dir), safe_serialization=True)
            if student_tokenizer is not None or tokenizer is not None:
                (student_tokenizer or tokenizer).save_pretrained(str(tmp / "student"))
            if tokenizer is not None and teacher_dir is not None:
                tokenizer.save_pretrained(str(teacher_dir))
            if len(self._student.projections):
                save_file({k: v.detach().cpu().contiguous() for k, v in self._student.projections.state_dict().items()},
                          str(tmp / "feature_projections.safetensors"))
            self.config.save_yaml(tmp / "distill_config.yaml")
        return target


__all__ = ["MetaDistiller", "NumericalError", "make_optimizer"]
