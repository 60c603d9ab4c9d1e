"""Settings for a distillation run: one dataclass, YAML load/save, validation with clear errors."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .config_checks import (DIVERGENCES, FD_SCHEMES, LR_SCHEDULES, META_GRADS, META_UPDATES, OPTIMIZERS,
                            PILOT_OPTIMIZERS, PILOTS, PRECISIONS, QUIZ_LOSSES, REPORT_TO, TASKS, ConfigError,
                            check_teacher_layers, validate_config, yaml_number)

# the allowed values, ConfigError and the checks live in config_checks; config names them too
__all__ = ["DIVERGENCES", "FD_SCHEMES", "LR_SCHEDULES", "META_GRADS", "META_UPDATES", "OPTIMIZERS", "PILOTS",
           "PILOT_OPTIMIZERS", "PRECISIONS", "QUIZ_LOSSES", "REPORT_TO", "TASKS", "ConfigError", "DistillConfig",
           "check_teacher_layers"]


@dataclass
class DistillConfig:
    """Everything that defines a learning-to-teach distillation run.

    The inner (distillation) loss is
    ``alpha * T^2 * D(softmax(z_T/T), softmax(z_S/T)) + (1 - alpha) * CE(z_S, y)
    + feature_weight * L_feat``.
    """

    task: str = "classification"
    """ "classification": sequence classifiers, soft labels over classes (teacher and student may
    tokenize differently). "causal_lm": causal language models distilled token by token over the
    real (non-padding) positions of a shared vocabulary; hard labels are the next tokens."""
    lm_chunk_size: int | None = 1024
    """causal_lm: token positions per chunk of the token-level loss (None: all at once). Each
    chunk's softmax intermediates are recomputed in the backward instead of kept."""
    truncate_vocab: bool = False
    """causal_lm: when the models' output vocabularies differ in size, compare only the shared
    first ids instead of refusing (check the tokenizers agree: metakd.vocab.check_tokenizers)."""
    meta_update: str = "lora"
    """What the quiz loss updates in the teacher: "lora" (adapters only), "full" (every weight),
    or "none" (plain KD, frozen teacher, no pilot and no quiz)."""
    meta_grad: str = "higher"
    """Backend that computes the meta-gradient through the pilot step: "higher" (the reference:
    unrolled double-backward graph; any unroll_steps, SGD or Adam pilot), "jvp" (exact for one SGD
    pilot step, forward-mode AD, no second-order graph), "finite_diff" (central differences, two
    no-grad student forwards; any attention kernel)."""
    fd_epsilon: float = 1e-3
    """finite_diff only: the directional derivative steps θ ± ε·g with ε = fd_epsilon / ‖g‖ (a step
    of this length in parameter space). The error is O(fd_epsilon²) plus float rounding that grows
    as fd_epsilon shrinks; 1e-3 measured best in float32 and float64 on the test models."""
    fd_scheme: str = "central"
    """finite_diff only: "central" [L_in(θ+εg) − L_in(θ−εg)]/2ε (two extra student forwards, error
    O(ε²)) or "forward" [L_in(θ+εg) − L_in(θ)]/ε (one extra forward; L_in(θ) reuses the pilot's
    student outputs, same dropout masks; error O(ε))."""
    teacher_layers: Any = "all"
    """Which teacher blocks learn: "all", "top:k" (the last k blocks) or a list of block indices.
    Otherwise only those blocks learn (lora: adapters only in them; full: only their weights; the
    embeddings and the head learn in neither mode), and the frozen trunk (every block below the
    lowest learning block, and the embeddings) runs once per meta-step without grad: the teacher
    backward stops at its output and pilot="restore" replays it in the second teacher forward."""
    meta_batch_size: int | None = None
    """Rows of the training batch (its first ones) that the meta-gradient uses: the teacher
    forward attached to φ, the pilot step, the directional derivative and the teacher backward.
    The meta-gradient is then the exact one of a pilot step on that sub-batch; the real student
    step still uses the whole batch (needs pilot="restore"). None: the whole batch."""
    teacher_checkpointing: bool = False
    """Recompute the teacher's block activations in the meta backward instead of keeping them
    from the teacher forward (activation checkpointing, use_reentrant=False): less memory while
    the student side of the meta-step runs, one more teacher forward of time."""
    temperature: float = 2.0
    """Softmax temperature T of the soft term (> 0)."""
    alpha: float = 0.5
    """Weight of the soft term; 1 - alpha weighs the hard-label cross-entropy."""
    divergence: str = "forward_kl"
    """Soft term: "forward_kl" KL(p_T || p_S) (Hinton et al.), "reverse_kl" KL(p_S || p_T)
    (mode-seeking), "jsd" (generalized Jensen-Shannon with jsd_beta), or "mse" (mean squared difference
    of the softened probabilities, torch's MSELoss: MetaDistil's soft loss); each times T^2."""
    jsd_beta: float = 0.5
    """beta of the generalized JSD, in (0, 1): beta*KL(p_T||m) + (1-beta)*KL(p_S||m), m = beta*p_T + (1-beta)*p_S."""
    pilot_lr: Any = 1e-3
    """Step size of the differentiable pilot student step, or "student": the student optimizer's
    current (scheduled) learning rate at each meta-step."""
    pilot_optimizer: str = "sgd"
    """Update rule of the pilot step: "sgd" (theta' = theta - pilot_lr * grad) or "adam"
    (a fresh differentiable Adam with lr = pilot_lr; "higher" backend only)."""
    unroll_steps: int = 1
    """Pilot steps unrolled on the training batch before the quiz loss."""
    pilot: str = "restore"
    """Real student step after the teacher update: "restore" recomputes the teacher outputs with
    the updated teacher and steps on L_in; "reuse" steps on the pilot's gradient (no second
    teacher forward)."""
    meta_every: int = 1
    """Run a meta-step every k steps; plain KD steps in between."""
    meta_start: Any = 0
    """The teacher does not learn before this training step (an integer), or before this share of
    the run's training steps (a number in (0, 1), resolved by ``fit``): plain KD steps until then,
    with no meta cost."""
    recipe: str | None = None
    """A published recipe as a preset: "metadistil", "mpl" or "lgtm" (``metakd.recipes``). It fills
    the settings this config did not set and the run prints what it set. None: no preset."""
    meta_weight: float = 1.0
    """Weight of the quiz loss through the pilot step in the teacher's objective
    ``L_T = meta_weight·L_quiz(θ'(φ)) + teacher_ce_weight·CE(T_φ(x), y)
    + teacher_student_weight·T²·KL(p_S ‖ p_T) + teacher_anchor_weight·T²·KL(p_T0 ‖ p_T)``."""
    teacher_ce_weight: float = 0.0
    """Weight of the teacher's own cross-entropy on the training batch's labels (next-token CE for a
    causal LM) in the teacher's objective (Meta Pseudo Labels, LGTM, PESF-KD)."""
    teacher_student_weight: float = 0.0
    """Weight of T²·KL(p_S ‖ p_T) on the training batch, the student's soft labels at θ toward which
    the teacher is pulled (LGTM)."""
    teacher_anchor_weight: float = 0.0
    """Weight of T²·KL(p_T0 ‖ p_T): a trust region around the teacher as it was given (p_T0; LoRA:
    the model with its initial adapters, full: the initial weights of the learning blocks, kept as one
    copy). Costs one more no-grad teacher forward per meta-step."""
    quiz_batches: Any = 1
    """Quiz batches whose mean quiz loss each meta-step differentiates (``fit`` draws one quiz batch
    of ``quiz_batches × quiz_batch_size`` rows), or "all": the whole quiz split at every meta-step
    (MetaDistil)."""
    quiz_loss: str = "ce"
    """The quiz loss: "ce" (cross-entropy; it rewards a less confident student as much as a more
    accurate one) or "margin" (multi-class hinge, margin 1: it rewards only ranking the right class
    first). Classification only for "margin"."""
    teacher_guard: bool = True
    """Meta modes: at every evaluation score the teacher on the validation split; when its accuracy
    falls more than ``teacher_guard_points`` below its start, restore its learning parameters to
    their best state so far, halve its learning rate, and after ``teacher_guard_trips`` trips stop
    meta-updating (``metakd.teacher_guard``). Needs validation data to act; a causal LM's
    teacher is scored by its next-token accuracy."""
    teacher_guard_points: float = 1.0
    """Accuracy points below its starting validation accuracy at which the guard trips."""
    teacher_guard_trips: int = 3
    """Trips after which the guard stops the teacher's meta-updates for the rest of the run."""
    student_optimizer: str = "adamw"
    """Optimizer of the student: "adamw" (AdamW) or "sgd"."""
    teacher_optimizer: str = "adamw"
    """Optimizer of the teacher's meta-update (its LoRA adapters, or every weight with
    meta_update="full"): "adamw" (AdamW) or "sgd"."""
    student_lr: float = 5e-5
    """Learning rate of the student optimizer (the peak rate under a schedule)."""
    teacher_lr: float = 1e-4
    """Learning rate of the teacher's meta-update optimizer (the peak rate under a schedule)."""
    teacher_lr_ratio: float | None = None
    """When set, the teacher's learning rate is this multiple of ``student_lr`` (``teacher_lr`` is
    then ignored), so a recipe carries over between models."""
    student_lr_schedule: str = "constant"
    """Learning-rate schedule of the student optimizer over the run's training steps: "constant",
    "linear" (decay to 0 at the last step) or "cosine" (half a cosine to 0), each after
    ``warmup_steps``/``warmup_ratio`` of linear warm-up (``transformers.get_scheduler``; applied by
    ``fit``, stepped once per training step, saved in checkpoints)."""
    teacher_lr_schedule: str = "constant"
    """The same for the teacher's meta-update optimizer, over the teacher's own steps: the meta-steps
    the run takes (every ``meta_every``-th training step from ``meta_start``), stepped after each one
    (a meta-step the numerical guards skip still counts). Its warm-up counts teacher steps too:
    ``warmup_steps`` teacher steps, or ``warmup_ratio`` of the run's meta-steps."""
    warmup_steps: int | None = None
    """Steps of linear learning-rate warm-up from 0 for both schedules (None: 0, or warmup_ratio)."""
    warmup_ratio: float | None = None
    """Warm-up as a share in [0, 1) of the run's training steps (rounded); set it or warmup_steps."""
    weight_decay: float = 0.0
    """Weight decay of both optimizers (AdamW's decoupled decay; SGD's L2 term)."""
    teacher_grad_clip: float | None = 1.0
    """Clip the teacher's meta-gradient to this global norm; None disables clipping."""
    max_bad_steps: int = 10
    """Consecutive steps with a non-finite (NaN/inf) loss or gradient after which the run stops
    with metakd.distiller.NumericalError; each such step is skipped (never applied), counted and
    logged."""
    lora_r: int = 8
    """Rank of the teacher's LoRA adapters (meta_update="lora")."""
    lora_alpha: int = 16
    """LoRA alpha of the teacher's adapters: their update is scaled by lora_alpha / lora_r."""
    lora_dropout: float = 0.0
    """Dropout on the teacher adapters' input (peft's ``lora_dropout``). It has no effect in metakd:
    every teacher pass of a step (soft labels, the meta forward, ``pilot="restore"``) runs in eval mode,
    where dropout is off. Kept for the adapters' own config (``teacher_adapters/``)."""
    lora_target_modules: list[str] | None = None
    """Module names that get LoRA adapters; None picks defaults for the architecture
    (peft's table, e.g. query/value for BERT, c_attn for GPT-2, else every Linear but the head)."""
    student_lora: bool = False
    """Train the student through LoRA adapters (plus its classification head) instead of every
    weight: the LLM-Neo setting. Works in every meta mode; with a meta-update it needs
    ``meta_grad="jvp"`` or ``"finite_diff"`` (``higher`` cannot patch peft's LoRA layers; refused)."""
    student_lora_r: int = 4
    """student_lora: rank of the student's LoRA adapters."""
    student_lora_alpha: int = 8
    """student_lora: LoRA alpha of the student's adapters (scaled by student_lora_alpha / student_lora_r)."""
    student_lora_target_modules: list[str] | None = None
    """None: the attention q/k/v projections of known architectures (query/key/value for BERT,
    c_attn for GPT-2, q_proj/k_proj/v_proj for Llama-style models)."""
    feature_layers: dict[int, int] | None = None
    """Hidden-state distillation map: student layer -> teacher layer (0 = embeddings output,
    i = output of block i, before any final norm; negative indices count from the end, -1 = the
    last block's output). None or empty disables the feature loss."""
    feature_weight: float = 0.0
    """Weight of the mean-squared hidden-state loss over the mapped layers."""
    quiz_fraction: float = 0.1
    """Share of the training data carved out (deterministically, by seed) as the quiz split."""
    validation_fraction: float = 0.0
    """Share of the training data left after the quiz split carved out (by seed) as a validation split,
    unique by text and disjoint from the quiz split and the evaluation data
    (``metakd.data.split_validation``); it is scored at every evaluation and ``fit`` reports the
    best-validation step (``history["best"]``). 0 disables it."""
    eval_subset: int | None = None
    """Evaluations before the last score only the first N evaluation examples (a fixed subset:
    cheaper learning curves); the last evaluation scores them all. Each point records how many it
    scored (``eval_examples``). None scores every example every time."""
    track_teacher: int | None = None
    """Classification: at every evaluation also score the teacher on the first N evaluation
    examples: accuracy, mean entropy of its soft labels at ``temperature`` and KL(initial teacher
    || current teacher) (``metakd.teacher_stats``). None disables it."""
    batch_size: int = 32
    """Training batch size: the global batch, divisible by the number of processes in a multi-process run."""
    quiz_batch_size: int | None = None
    """Quiz batch size; None uses batch_size."""
    eval_batch_size: int = 64
    """Batch size of evaluation passes (no gradients)."""
    epochs: int = 1
    """Passes over the training data (what is left after the quiz and validation splits are carved
    out); max_steps ends the run earlier when it is reached first."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs when reached first)."""
    eval_every: int | None = None
    """Evaluate on eval_data every k steps during fit (None: only at the end)."""
    max_length: int = 128
    """Tokens per example: longer texts are truncated (pairs as the tokenizer truncates them);
    causal_lm run files cut their corpus into blocks of this length. At most the models' position
    table (max_position_embeddings), checked before any work."""
    seed: int = 0
    """Seed of everything random in a run: adapter and feature-projection initialisation, the quiz
    and validation splits, the shuffles, and each step's dropout (seeded from seed, the process rank
    and the step number: metakd.rng). The same seed, data and settings give the same run."""
    checkpoint_every: int | None = None
    """Write a checkpoint every k steps (``fit(checkpoint_dir=...)``; run files: OUTPUT/checkpoint).
    One is written at the end and on SIGTERM/SIGINT too; None: only those."""
    progress: bool = True
    """Show tqdm progress bars (with an ETA)."""
    precision: str = "fp32"
    """Compute precision of every forward pass (teacher forward, pilot, quiz, directional derivative,
    student step): "fp32", or "bf16"/"fp16" through ``torch.autocast`` with the weights kept as loaded
    (fp32 master weights for fp32 models) and losses in fp32; "fp16" adds a ``torch.amp.GradScaler``
    (loss scaling). See ``metakd.precision``."""
    report_to: str | None = None
    """"tensorboard": also write each step's scalars as TensorBoard events (``fit(log_dir=...)``;
    run files: OUTPUT/tensorboard; needs the ``tensorboard`` extra). None: only OUTPUT/log.jsonl."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "DistillConfig":
        obj = super().__new__(cls)
        names = [f.name for f in fields(cls)]
        obj._explicit = set(names[:len(args)]) | set(kwargs)  # what a recipe must not overwrite
        return obj

    def __post_init__(self) -> None:
        from .recipes import apply_recipe

        try:
            self.recipe_filled = apply_recipe(self, self._explicit)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        """The settings the recipe filled (``metakd.recipes``): the run prints them."""
        if self.feature_layers is not None:
            try:
                self.feature_layers = {int(k): int(v) for k, v in dict(self.feature_layers).items()}
            except (TypeError, ValueError):
                raise ConfigError("feature_layers must map student layers to teacher layers, e.g. {1: 2, 2: 4}; "
                                  f"got {self.feature_layers!r}") from None
        for name in ("lora_target_modules", "student_lora_target_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [value]  # one module name, not its letters
            if value is not None and not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{name} must be a list of module names or null, got {value!r}")
            setattr(self, name, None if value is None else list(value))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field (``metakd.config_checks.validate_config``)."""
        validate_config(self)

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DistillConfig":
        """Build from a mapping; unknown keys are an error with a did-you-mean."""
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigError(f"unknown config key {key!r}{extra}")
        return cls(**{k: yaml_number(v) for k, v in values.items()})

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DistillConfig":
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:  # one line: the CLI prints no traceback
            raise ConfigError(f"cannot read config {path}: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
        # A file may hold the distillation settings at top level or under a 'distill' key.
        if "distill" in data:
            data = data["distill"] or {}
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: 'distill' must be a mapping of config keys")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "DistillConfig":
        """A copy with ``changes``; what a recipe filled stays known as filled (the run prints it), and a
        changed recipe fills the fields neither this config nor ``changes`` set."""
        from .recipes import apply_recipe

        new = dataclasses.replace(self, **changes)  # every field given: the recipe fills nothing here
        new._explicit = self._explicit | set(changes)
        if "recipe" in changes and changes["recipe"] != self.recipe:
            new.recipe_filled = apply_recipe(new, new._explicit)
            new.validate()
        else:
            new.recipe_filled = {k: v for k, v in self.recipe_filled.items() if k not in changes}
        return new
