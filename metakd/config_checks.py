"""What a ``DistillConfig`` may hold: the allowed values of its choices, ``ConfigError``, and the checks
``DistillConfig.validate`` runs (``validate_config``), with the value checkers other settings reuse."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import DistillConfig

TASKS = ("classification", "causal_lm")
META_UPDATES = ("none", "lora", "full")
META_GRADS = ("higher", "jvp", "finite_diff")
PILOTS = ("restore", "reuse")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "mse")
QUIZ_LOSSES = ("ce", "margin")
OPTIMIZERS = ("adamw", "sgd")
PILOT_OPTIMIZERS = ("sgd", "adam")
FD_SCHEMES = ("central", "forward")
LR_SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
REPORT_TO = ("tensorboard",)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def validate_config(cfg: DistillConfig) -> None:
    """Raise ConfigError naming the first invalid field of ``cfg`` (``DistillConfig.validate``)."""
    choice("task", cfg.task, TASKS)
    if cfg.lm_chunk_size is not None:
        positive_int("lm_chunk_size", cfg.lm_chunk_size)
    if not isinstance(cfg.truncate_vocab, bool):
        raise ConfigError(f"truncate_vocab must be true or false, got {cfg.truncate_vocab!r}")
    choice("meta_update", cfg.meta_update, META_UPDATES)
    choice("meta_grad", cfg.meta_grad, META_GRADS)
    choice("pilot", cfg.pilot, PILOTS)
    choice("divergence", cfg.divergence, DIVERGENCES)
    if not (is_number(cfg.jsd_beta) and 0.0 < cfg.jsd_beta < 1.0):
        raise ConfigError(f"jsd_beta must be in (0, 1), got {cfg.jsd_beta!r}")
    choice("pilot_optimizer", cfg.pilot_optimizer, PILOT_OPTIMIZERS)
    choice("student_optimizer", cfg.student_optimizer, OPTIMIZERS)
    choice("teacher_optimizer", cfg.teacher_optimizer, OPTIMIZERS)
    choice("precision", cfg.precision, PRECISIONS)
    if cfg.report_to is not None:
        choice("report_to", cfg.report_to, REPORT_TO)
    positive("temperature", cfg.temperature)
    if cfg.pilot_lr != "student":
        positive("pilot_lr", cfg.pilot_lr)
    validate_teacher_objective(cfg)
    positive("fd_epsilon", cfg.fd_epsilon)
    positive("student_lr", cfg.student_lr)
    positive("teacher_lr", cfg.teacher_lr)
    non_negative("weight_decay", cfg.weight_decay)
    choice("student_lr_schedule", cfg.student_lr_schedule, LR_SCHEDULES)
    choice("teacher_lr_schedule", cfg.teacher_lr_schedule, LR_SCHEDULES)
    if cfg.warmup_steps is not None and not (isinstance(cfg.warmup_steps, int)
                                              and not isinstance(cfg.warmup_steps, bool) and cfg.warmup_steps >= 0):
        raise ConfigError(f"warmup_steps must be an integer >= 0 or null, got {cfg.warmup_steps!r}")
    if cfg.warmup_ratio is not None and not (is_number(cfg.warmup_ratio) and 0.0 <= cfg.warmup_ratio < 1.0):
        raise ConfigError(f"warmup_ratio must be in [0, 1) or null, got {cfg.warmup_ratio!r}")
    if cfg.warmup_steps is not None and cfg.warmup_ratio is not None:
        raise ConfigError(f"set warmup_steps ({cfg.warmup_steps}) or warmup_ratio ({cfg.warmup_ratio}), not both")
    if not (is_number(cfg.validation_fraction) and 0.0 <= cfg.validation_fraction < 1.0):
        raise ConfigError(f"validation_fraction must be in [0, 1), got {cfg.validation_fraction!r}")
    if is_number(cfg.quiz_fraction) and cfg.quiz_fraction + cfg.validation_fraction >= 1.0:
        raise ConfigError(f"quiz_fraction + validation_fraction must be below 1 (training data must remain), got "
                          f"{cfg.quiz_fraction} + {cfg.validation_fraction}")
    if cfg.eval_subset is not None:
        positive_int("eval_subset", cfg.eval_subset)
    if cfg.track_teacher is not None:
        positive_int("track_teacher", cfg.track_teacher)
        if cfg.task != "classification":
            raise ConfigError("track_teacher scores a classifier teacher; it does not apply to task='causal_lm'")
    non_negative("feature_weight", cfg.feature_weight)
    if not (is_number(cfg.alpha) and 0.0 <= cfg.alpha <= 1.0):
        raise ConfigError(f"alpha must be in [0, 1], got {cfg.alpha!r}")
    if not (is_number(cfg.lora_dropout) and 0.0 <= cfg.lora_dropout < 1.0):
        raise ConfigError(f"lora_dropout must be in [0, 1), got {cfg.lora_dropout!r}")
    if not (is_number(cfg.quiz_fraction) and 0.0 < cfg.quiz_fraction < 1.0):
        raise ConfigError(f"quiz_fraction must be in (0, 1), got {cfg.quiz_fraction!r}")
    if cfg.teacher_grad_clip is not None:
        positive("teacher_grad_clip", cfg.teacher_grad_clip)
    _validate_steps_and_combinations(cfg)


def _validate_steps_and_combinations(cfg: DistillConfig) -> None:
    """The second half of ``validate_config``: counts and sizes, then the settings that must agree."""
    positive_int("max_bad_steps", cfg.max_bad_steps)
    for name in ("unroll_steps", "meta_every", "batch_size", "eval_batch_size", "epochs",
                 "lora_r", "lora_alpha", "student_lora_r", "student_lora_alpha", "max_length"):
        positive_int(name, getattr(cfg, name))
    for name in ("max_steps", "quiz_batch_size", "eval_every", "checkpoint_every"):
        if getattr(cfg, name) is not None:
            positive_int(name, getattr(cfg, name))
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    if cfg.feature_layers:
        if cfg.feature_weight == 0.0:
            raise ConfigError("feature_layers is set but feature_weight is 0; set feature_weight > 0")
    if cfg.pilot_optimizer == "adam" and cfg.meta_grad != "higher":
        raise ConfigError(f"pilot_optimizer='adam' needs meta_grad='higher' ({cfg.meta_grad!r} is exact for "
                          "one SGD pilot step)")
    if cfg.unroll_steps > 1 and cfg.meta_grad != "higher":
        raise ConfigError(f"unroll_steps={cfg.unroll_steps} needs meta_grad='higher' ({cfg.meta_grad!r} is "
                          "exact for one SGD pilot step)")
    if not isinstance(cfg.student_lora, bool):
        raise ConfigError(f"student_lora must be true or false, got {cfg.student_lora!r}")
    if cfg.student_lora and cfg.meta_grad == "higher" and cfg.meta_update != "none":
        raise ConfigError("student_lora with meta_grad='higher' is not supported: higher cannot patch peft's "
                          "LoRA layers; use meta_grad='jvp' (exact) or 'finite_diff'")
    choice("fd_scheme", cfg.fd_scheme, FD_SCHEMES)
    if cfg.meta_grad == "finite_diff" and cfg.fd_scheme == "forward" and cfg.precision == "bf16":
        raise ConfigError("fd_scheme='forward' under precision='bf16' errs by 4-19% (no step length fixes it): use "
                          "fd_scheme='central', meta_grad='jvp', or precision fp16/fp32")
    if isinstance(cfg.teacher_layers, tuple):
        cfg.teacher_layers = list(cfg.teacher_layers)
    check_teacher_layers(cfg.teacher_layers)
    if cfg.meta_batch_size is not None:
        positive_int("meta_batch_size", cfg.meta_batch_size)
        if cfg.meta_batch_size > cfg.batch_size:
            raise ConfigError(f"meta_batch_size {cfg.meta_batch_size} is larger than batch_size "
                              f"{cfg.batch_size}: it takes the first rows of each training batch")
        if cfg.pilot == "reuse" and cfg.meta_batch_size < cfg.batch_size and cfg.meta_update != "none":
            raise ConfigError("meta_batch_size needs pilot='restore': pilot='reuse' would step the student on "
                              "the sub-batch's pilot gradient, and the real step must use the whole batch")
    if not isinstance(cfg.teacher_checkpointing, bool):
        raise ConfigError(f"teacher_checkpointing must be true or false, got {cfg.teacher_checkpointing!r}")


def validate_teacher_objective(cfg: DistillConfig) -> None:
    """The teacher-objective, recipe and guard settings."""
    if cfg.recipe is not None:
        from .recipes import RECIPES

        choice("recipe", cfg.recipe, tuple(RECIPES))
    for name in ("meta_weight", "teacher_ce_weight", "teacher_student_weight", "teacher_anchor_weight"):
        non_negative(name, getattr(cfg, name))
    if cfg.teacher_lr_ratio is not None:
        positive("teacher_lr_ratio", cfg.teacher_lr_ratio)
    if cfg.quiz_batches != "all":
        positive_int("quiz_batches", cfg.quiz_batches)
    ms = cfg.meta_start
    if not ((isinstance(ms, int) and not isinstance(ms, bool) and ms >= 0)
            or (isinstance(ms, float) and 0.0 < ms < 1.0)):
        raise ConfigError(f"meta_start must be a step (an integer >= 0) or a share of the run in (0, 1), got {ms!r}")
    choice("quiz_loss", cfg.quiz_loss, QUIZ_LOSSES)
    if cfg.quiz_loss == "margin" and cfg.task != "classification":
        raise ConfigError("quiz_loss='margin' ranks classes of a classifier; task='causal_lm' needs quiz_loss='ce'")
    if not isinstance(cfg.teacher_guard, bool):
        raise ConfigError(f"teacher_guard must be true or false, got {cfg.teacher_guard!r}")
    positive("teacher_guard_points", cfg.teacher_guard_points)
    positive_int("teacher_guard_trips", cfg.teacher_guard_trips)


def check_teacher_layers(spec: Any) -> None:
    """Raise ConfigError unless ``spec`` has the shape of a ``teacher_layers`` value (the block
    count is checked against the teacher by ``metakd.trunk.resolve_teacher_layers``)."""
    if spec == "all":
        return
    if isinstance(spec, str):
        kind, _, count = spec.partition(":")
        if kind == "top" and count.isdigit() and int(count) > 0:
            return
    elif isinstance(spec, (list, tuple)) and spec and all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in spec) and len(set(spec)) == len(spec):
        return
    raise ConfigError(f"teacher_layers must be 'all', 'top:k' (k >= 1) or a list of distinct block indices >= 0, "
                     f"got {spec!r}")


def yaml_number(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads '5e-5' as a string; take numeric strings as the numbers they mean."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def positive(name: str, value: Any) -> None:
    if not (is_number(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def non_negative(name: str, value: Any) -> None:
    if not (is_number(value) and value >= 0):
        raise ConfigError(f"{name} must be >= 0, got {value!r}")


def positive_int(name: str, value: Any) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
