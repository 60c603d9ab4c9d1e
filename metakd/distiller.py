"""MetaDistiller: plain KD, or learning to teach with a LoRA or full teacher meta-update.

This file builds a distiller (models, adapters, objective, optimizers) and the objects it owns:
its ``TrainingState`` (``training_state.py``), its ``MetaStep`` (one training step and its numerical
guards, ``meta_step.py``); each ``fit`` runs a ``TrainingLoop`` (``training.py``); saving is in
``saving.py``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .config import DistillConfig
from .distributed import Dist
from .forward import blocks_path
from .evaluate import evaluate_model
from .meta_step import MetaStep
from .metagrad import MetaResult
from .numerical_guards import NumericalError
from .precision import check_precision
from .models import (ModelError, attach_lora, attach_student_lora, count_parameters, find_layer_list, has_lora,
                     meta_parameters, use_eager_attention)
from .objective import DistillStudent, Objective
from .quantization import check_meta_update, keep_differentiable
from .rng import seeded
from .initial_teacher import InitialTeacher
from .sharing import structural_copy
from .teacher_guard import TeacherGuard
from .teacher_objective import TeacherTerms
from .training import TrainingLoop
from .training_state import TrainingState
from .trunk import FrozenTrunk, resolve_teacher_layers
from .vocab import shared_vocab_size

log = logging.getLogger(__name__)


def make_optimizer(name: str, params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def _num_labels(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "num_labels", None)


def _require_lm_head(name: str, model: nn.Module) -> None:
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get) or get() is None:
        raise ModelError(f"task='causal_lm' needs causal language models (AutoModelForCausalLM); the {name} is a "
                         f"{type(model).__name__} without an output (LM) head")


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


def _check_teacher_adapters(teacher: nn.Module, mode: str, keep: bool) -> None:
    """Refuse a teacher that carries LoRA adapters unless the caller means it (and always in full
    mode, which would train them along with every weight)."""
    if not has_lora(teacher):
        return
    if mode == "full":
        raise ModelError("meta_update='full' trains every weight of a plain teacher, but this teacher carries LoRA "
                         "adapters; merge them first (peft: teacher.merge_and_unload()) or pass the base model")
    if not keep:
        raise ModelError("the teacher already carries LoRA adapters (a peft model, or d.teacher of an earlier "
                         "MetaDistiller); pass the base model for fresh adapters, or keep_teacher_adapters=True to "
                         f"distil from these adapters (meta_update={mode!r})")


def _hidden_width(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "hidden_size", None)


class MetaDistiller:
    """Distil ``teacher`` into ``student`` with a teacher that learns to teach.

    ``teacher`` and ``student`` are Hugging Face models (or any ``nn.Module`` whose output has
    ``.logits``). In ``meta_update="lora"`` mode the teacher gets fresh LoRA adapters and only
    those receive the meta-gradient; ``"full"`` trains every teacher weight; ``"none"`` is plain
    KD with a frozen teacher. ``d.teacher`` and ``d.student`` are the live models.

    The caller's ``teacher`` is left as it was: the distiller works on a structural copy that
    shares its weights (``metakd.sharing.structural_copy``: no second copy of the weights in
    memory), so adapters, ``requires_grad`` flags and device moves stay on ``d.teacher``, and
    another distiller built from the same teacher starts from the same model. ``"full"`` mode
    trains the shared weights in place, as the student is trained in place: pass
    ``copy.deepcopy(teacher)`` to keep the original. A teacher that already carries LoRA adapters
    (a peft model, or ``d.teacher`` of an earlier distiller) is refused unless
    ``keep_teacher_adapters=True`` says it is meant: then lora mode meta-updates those adapters and
    plain KD distils from the teacher with them; ``"full"`` refuses such a teacher (merge the
    adapters first).

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
                 device: str | torch.device | None = None, timer: Any = None, dist: Dist | None = None,
                 keep_teacher_adapters: bool = False):
        self._config = cfg = config or DistillConfig()
        cfg.validate()
        _check_teacher_adapters(teacher, cfg.meta_update, keep_teacher_adapters)
        self.dist = dist if dist is not None else Dist.from_env()
        self.dist.check_config(cfg)  # batch sizes divisible by the processes; no 'higher' across processes
        check_meta_update(teacher, cfg.meta_update)  # a quantized teacher: LoRA meta-update only
        if cfg.meta_update != "none":
            keep_differentiable(teacher)  # bitsandbytes' packed CPU 4-bit kernel drops gradients
        if device is None and self.dist.distributed:
            device = self.dist.device  # one GPU per process (or the CPU)
        self.device = torch.device(device) if device is not None else next(student.parameters()).device
        for model in (teacher, student):  # before any adapter is attached: a bad precision fails fast
            check_precision(cfg.precision, self.device, next(model.parameters()).dtype)
        self._timer = timer
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
        if cfg.recipe_filled:
            from .recipes import describe

            log.warning(describe(cfg.recipe, cfg.recipe_filled))

        # LoRA adapters and feature projections start from random weights: seed them by config,
        # so a run is reproducible from its seed alone, and leave the caller's RNG as it was
        with seeded(cfg.seed, self.device):
            self._build(teacher, student)

    def _build(self, teacher: nn.Module, student: nn.Module) -> None:
        """Models (adapters, eager attention, feature projections), objective and optimizers."""
        cfg = self.config
        teacher = structural_copy(teacher)  # the caller's teacher keeps its modules, flags and device
        self.teacher_layers = resolve_teacher_layers(cfg.teacher_layers, len(find_layer_list(teacher)[1]))
        if cfg.meta_update == "lora" and not has_lora(teacher):
            teacher = attach_lora(teacher, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules,
                                  layers=self.teacher_layers)
        self.teacher = teacher.to(self.device)
        self.phi = meta_parameters(self.teacher, cfg.meta_update, self.teacher_layers)
        if cfg.student_lora and not has_lora(student):
            student = attach_student_lora(student, cfg.student_lora_r, cfg.student_lora_alpha, 0.0,
                                          cfg.student_lora_target_modules)
        if cfg.meta_update != "none" and cfg.meta_grad in ("higher", "jvp"):
            # fused SDPA kernels have no double backward (higher) and no forward derivative (jvp)
            use_eager_attention(student)

        feature_layers = self._check_feature_layers(teacher, student, cfg.feature_layers or {})
        t_width, s_width = _hidden_width(self.teacher), _hidden_width(student)
        self._student = DistillStudent(
            student.to(self.device), feature_layers,
            teacher_widths={t: t_width for t in feature_layers.values()} if t_width else None,
            student_widths={s: s_width for s in feature_layers} if s_width else None,
        ).to(self.device)
        self.teacher_blocks = (blocks_path(self.teacher)
                               if feature_layers or (cfg.teacher_checkpointing and cfg.meta_update != "none") else None)
        self.trunk = self._frozen_trunk(feature_layers)
        self.objective = Objective(cfg.temperature, cfg.alpha, feature_layers, cfg.feature_weight,
                                   cfg.divergence, cfg.jsd_beta, task=cfg.task, lm_chunk_size=cfg.lm_chunk_size,
                                   vocab_size=self.vocab_size, quiz_loss=cfg.quiz_loss)
        self.teacher_terms = TeacherTerms.from_config(cfg)
        # p_T0 of the anchor term: the initial values of φ, swapped in for a no-grad forward (a classifier's
        # logits kept per example)
        self.initial_teacher = (InitialTeacher(self.teacher, cache=cfg.task == "classification")
                                if self.phi and self.teacher_terms.needs_initial else None)
        self.guard = TeacherGuard(self.phi, cfg.teacher_guard_points, cfg.teacher_guard_trips,
                                  enabled=cfg.teacher_guard and cfg.meta_update != "none")

        self.student_params = [p for p in self._student.parameters() if p.requires_grad]
        if not self.student_params:
            raise ModelError("the student has no trainable parameters")
        teacher_lr = cfg.student_lr * cfg.teacher_lr_ratio if cfg.teacher_lr_ratio is not None else cfg.teacher_lr
        self.state = TrainingState(
            cfg, make_optimizer(cfg.student_optimizer, self.student_params, cfg.student_lr, cfg.weight_decay),
            make_optimizer(cfg.teacher_optimizer, self.phi, teacher_lr, cfg.weight_decay) if self.phi else None,
            self.device)
        self.meta_step = MetaStep(
            cfg, self.state, teacher=self.teacher, phi=self.phi, teacher_blocks=self.teacher_blocks,
            teacher_layers=self.teacher_layers, trunk=self.trunk, student=self._student,
            student_params=self.student_params, objective=self.objective, teacher_terms=self.teacher_terms,
            initial_teacher=self.initial_teacher, guard=self.guard, dist=self.dist, device=self.device,
            vocab_size=self.vocab_size, timer=self._timer)
        """One training step (plain KD or a meta-step) and its numerical guards."""

    # ------------------------------------------------------------------ training
    @property
    def config(self) -> DistillConfig:
        """The run's settings. Setting a changed one for the next ``fit`` (``d.config =
        d.config.replace(max_steps=...)``) validates it and hands it to the meta-step and the training state."""
        return self._config

    @config.setter
    def config(self, config: DistillConfig) -> None:
        config.validate()
        self._config = self.state.config = self.meta_step.config = config

    @property
    def timer(self) -> Any:
        """The phase timer of every step (``metakd.telemetry.PhaseTimer``; a no-op one by default)."""
        return self.meta_step.timer

    @timer.setter
    def timer(self, value: Any) -> None:
        self.meta_step.timer = value

    def step(self, batch: Mapping[str, Any], quiz_batch: Mapping[str, Any] | None = None) -> dict[str, float]:
        """One training step: a meta-step (pilot, quiz, teacher update, student update) when the
        mode and ``meta_every`` call for one, else a plain KD step. Returns floats
        (``metakd.meta_step.MetaStep.step``)."""
        return self.meta_step.step(batch, quiz_batch)

    def meta_gradient(self, batch: Mapping[str, Any], quiz_batch: Mapping[str, Any]) -> MetaResult:
        """The meta-gradient ``∇_φ L_quiz`` of this batch and quiz batch with the configured backend,
        without stepping anything (``metakd.meta_step.MetaStep.meta_gradient``)."""
        return self.meta_step.meta_gradient(batch, quiz_batch)

    def teacher_outputs(self, batch: Mapping[str, Any]) -> Any:
        """The teacher's logits and the hidden states the feature loss reads, on ``batch``."""
        return self.meta_step.teacher_outputs(batch)

    def autocast(self) -> Any:
        """The ``precision`` setting's autocast context on this device (every forward pass enters it)."""
        return self.meta_step.autocast()

    def pilot_lr(self) -> float:
        """The pilot step's size: ``pilot_lr``, or the student's current learning rate ("student")."""
        return self.meta_step.pilot_lr()

    def meta_batch(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """The rows of ``batch`` the meta-gradient uses (the first ``meta_batch_size``)."""
        return self.meta_step.meta_batch(batch)

    def teacher_learns(self) -> bool:
        """Whether the teacher learns at the next step: past ``meta_start`` and not stopped by the guard."""
        return self.meta_step.teacher_learns()

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
        best-validation point (``metakd.training.best_validation``). ``track_teacher`` adds the
        teacher's figures (``metakd.teacher_stats``) to every ``history["eval"]`` point. The
        learning-rate schedules (``student_lr_schedule``, ``teacher_lr_schedule``) run over this
        call's training steps.

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
        return TrainingLoop(self, checkpoint_dir, log_dir).run(train_data, quiz_data, eval_data, validation_data,
                                                               resume)

    def evaluate(self, data: Any, model: str = "student") -> dict[str, float]:
        """Accuracy, macro F1/precision/recall and mean CE loss of the student (or the teacher);
        for ``task="causal_lm"`` next-token loss and perplexity (``metakd.evaluate.evaluate_model``).
        Leaves the global RNG as it was."""
        if model not in ("student", "teacher"):
            raise ValueError(f"model must be 'student' or 'teacher', got {model!r}")
        net = self.student if model == "student" else self.teacher
        return evaluate_model(net, data, task=self.config.task, batch_size=self.config.eval_batch_size,
                              pad=self.pad_ids(), side=model, num_labels=self.num_labels,
                              lm_chunk_size=self.config.lm_chunk_size, device=self.device)

    def pad_ids(self) -> dict[str, int]:
        """The teacher's and the student's pad token ids (0 where a model's config has none)."""
        def pid(m: nn.Module) -> int:
            value = getattr(getattr(m, "config", None), "pad_token_id", None)
            return int(value) if value is not None else 0
        return {"teacher": pid(self.teacher), "student": pid(self.student)}

    # ------------------------------------------------------------------ the training state, read-only
    @property
    def steps_done(self) -> int:
        """Training steps taken so far (``state.steps_done``)."""
        return self.state.steps_done

    @property
    def student_optimizer(self) -> torch.optim.Optimizer:
        return self.state.student_optimizer

    @property
    def teacher_optimizer(self) -> torch.optim.Optimizer | None:
        """None in plain KD."""
        return self.state.teacher_optimizer

    @property
    def student_scheduler(self) -> Any:
        """The student's learning-rate schedule of the current ``fit`` (None before one)."""
        return self.state.student_scheduler

    @property
    def teacher_scheduler(self) -> Any:
        """The teacher's learning-rate schedule of the current ``fit`` (None before one, or in plain KD)."""
        return self.state.teacher_scheduler

    @property
    def scaler(self) -> torch.amp.GradScaler:
        """The fp16 ``GradScaler`` (disabled, a pass-through, for fp32 and bf16)."""
        return self.state.scaler

    @property
    def skipped_steps(self) -> int:
        """Steps skipped in all for a NaN/inf loss or gradient (``step`` reports ``skipped`` 1.0)."""
        return self.state.skipped_steps

    @property
    def bad_in_a_row(self) -> int:
        """Skipped steps in a row up to the last step; at ``max_bad_steps`` the run stops with NumericalError."""
        return self.state.bad_in_a_row

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

    def _frozen_trunk(self, feature_layers: Mapping[int, int]) -> FrozenTrunk | None:
        """The teacher's frozen trunk (the blocks below the lowest learning one) in a meta mode with
        ``teacher_layers`` other than "all"; None when every block from the first one learns."""
        if self.config.meta_update == "none" or not self.teacher_layers or self.teacher_layers[0] == 0:
            return None
        # teacher hidden state t is the output of block t-1
        return FrozenTrunk(self.teacher, blocks_path(self.teacher), self.teacher_layers[0],
                           keep=[t - 1 for t in feature_layers.values() if t >= 1])

    @staticmethod
    def _check_feature_layers(teacher: nn.Module, student: nn.Module, layers: Mapping[int, int]) -> dict[int, int]:
        if not layers:
            return {}
        return resolve_feature_layers(layers, len(find_layer_list(student)[1]), len(find_layer_list(teacher)[1]))

    def save(self, directory: str | Path, tokenizer: Any = None, student_tokenizer: Any = None) -> Path:
        """Save the distilled student, the teacher's adapters (or whole teacher), feature projections
        and the config (``metakd.saving.save_distilled``)."""
        from .saving import save_distilled

        return save_distilled(self, directory, tokenizer, student_tokenizer)


__all__ = ["MetaDistiller", "NumericalError", "make_optimizer", "resolve_feature_layers"]
