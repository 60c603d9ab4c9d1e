"""The runs of the main job (``metakd bench meta-update``): the teacher, fine-tuned once and cached; the
configurations; one configuration's worker, taking its steps in turn; a seed's rounds in lockstep."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import data as data_mod
from ..config import DistillConfig
from ..distiller import MetaDistiller
from ..evaluate import evaluate_model
from ..finetune import cache_key, cached_model, finetune_classifier
from ..models import embedded_teacher_path, load_classifier, student_from_teacher, use_eager_attention
from ..synthetic import splits_identity
from ..telemetry import EnergyMeter, PhaseTimer, measure
from .lockstep import Turns, run_lockstep
from .meta_update_report import phase_stats

NAME = "meta_update"
MODES = ("none", "lora", "full")
MODE_LABELS = {"none": "plain KD", "lora": "LoRA meta-update", "full": "full meta-update"}
# (numerator, denominator) configuration keys whose paired per-round step-time ratios are reported
COMPARISONS = (("lora", "full"), ("lora", "none"), ("full", "none"))
WORKER = "metakd.bench.meta_update"
"""The module whose ``--worker`` runs ``run_mode`` (``meta_update.main``): ``run_seed`` starts it, one process a
configuration."""


# ---------------------------------------------------------------------------- the teacher
def _tiny_teacher(vocab_size: int, num_labels: int, seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=128, num_labels=num_labels,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"
    return BertForSequenceClassification(cfg)


def prepare_teacher(args: argparse.Namespace, splits: dict[str, list], num_labels: int) -> dict[str, Any]:
    """Fine-tune the teacher on the task once (cached on disk); return where it lies and its scores."""
    s = args.settings
    tokenizer_dir = embedded_teacher_path()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    train = data_mod.encode(splits["train"], tokenizer, s["max_length"])
    key = cache_key(kind="meta-update-teacher", quick=args.quick, data=args.data, n_train=args.teacher_n_train or s["n_train"],
                    seed=args.seed, epochs=s["finetune_epochs"], max_length=s["max_length"], num_labels=num_labels,
                    version=1, **splits_identity(args.data))

    def build():
        if args.quick:
            model = _tiny_teacher(tokenizer.vocab_size, num_labels, args.seed)
            lr = 1e-3
        else:
            model, _ = load_classifier(tokenizer_dir, num_labels)
            lr = 5e-5
        steps = s["finetune_epochs"] * -(-len(train) // 32)
        print(f"fine-tuning the teacher on {len(train)} examples ({s['finetune_epochs']} epochs, {steps} steps; "
              "its progress bar shows the time left); cached for later runs", file=sys.stderr)
        finetune_classifier(model, train, epochs=s["finetune_epochs"], lr=lr, batch_size=32, seed=args.seed,
                            progress=not args.no_progress)
        return model

    def load(path: Path):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(path))

    start = time.perf_counter()
    _, teacher_dir, cached = cached_model(key, build, load, meta={"data": args.data, "settings": s})
    return {"teacher_dir": str(teacher_dir), "tokenizer_dir": str(tokenizer_dir), "cached": cached,
            "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class Configuration:
    """One configuration the bench interleaves: a key (unique), its label in the tables and the
    DistillConfig settings that make it, on top of the run's base config."""

    key: str
    label: str
    distill: dict[str, Any]


def configurations(args: argparse.Namespace) -> list[Configuration]:
    """The configurations of a run, in turn order. Each runs in its own process, and the
    processes take one step each in turn (``lockstep``); a new axis (e.g. which teacher layers
    learn) adds entries here, and COMPARISONS says which step-time ratios to report."""
    out = []
    for m in args.mode_list:
        for layers in (["all"] if m == "none" else args.layers_list):
            distill: dict[str, Any] = {"meta_update": m}
            if m != "none" and layers != "all":
                distill["teacher_layers"] = layers
            if m != "none" and args.meta_batch_size:
                distill.update(meta_batch_size=args.meta_batch_size, pilot="restore")
            key = m if layers == "all" else f"{m}@{layers}"
            label = MODE_LABELS[m] + ("" if layers == "all" else f", teacher_layers={layers}")
            if key not in {c.key for c in out}:
                out.append(Configuration(key, label, distill))
    return out


def comparisons(configs: list[Configuration]) -> list[tuple[str, str]]:
    """COMPARISONS among the configurations that run, plus each teacher_layers configuration
    against plain KD and against the full meta-update of every block."""
    keys = [c.key for c in configs]
    out = [c for c in COMPARISONS if all(k in keys for k in c)]
    for k in keys:
        if "@" in k:
            out += [(k, b) for b in ("none", "full") if b in keys]
    return out


# ---------------------------------------------------------------------------- one configuration (worker)
class _TakingTurns(MetaDistiller):
    """A MetaDistiller whose every step waits for its turn (``lockstep.Turns``)."""

    def __init__(self, *args: Any, turns: Turns | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.turns = turns

    def step(self, batch, quiz_batch=None):  # noqa: D102 - MetaDistiller.step
        if self.turns is not None:
            self.turns.wait()
        metrics = super().step(batch, quiz_batch)
        if self.turns is not None:
            self.turns.done(metrics["seconds"])
        return metrics


def run_mode(spec: dict[str, Any]) -> dict[str, Any]:
    """Distil with one configuration; runs in its own process, taking its steps in turn with the
    other configurations' processes when started by ``lockstep.run_lockstep``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    turns = Turns.from_env()
    if turns is not None:
        hf_logging.disable_progress_bar()  # several workers load at once: one progress bar (the rounds')
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # its own process: datasets' bars too
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    splits = data_mod.load_task(spec["data"], spec["n_train"], spec["n_eval"], spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    train = data_mod.encode(splits["train"], tokenizer, spec["max_length"])
    held_out = data_mod.encode(splits["eval"], tokenizer, spec["max_length"])
    teacher = AutoModelForSequenceClassification.from_pretrained(spec["teacher_dir"])
    use_eager_attention(teacher)
    student = student_from_teacher(teacher, spec["student_layers"])
    cfg = DistillConfig(**spec["distill"])
    pad = teacher.config.pad_token_id or 0
    teacher_before = evaluate_model(teacher, held_out, pad=pad)
    student_before = evaluate_model(student, held_out, pad=pad, side="student")

    timer = PhaseTimer(next(student.parameters()).device, memory=True, energy=EnergyMeter())
    distiller = _TakingTurns(teacher, student, cfg, timer=timer, turns=turns)
    with measure(energy=EnergyMeter()) as m:
        history = distiller.fit(train)
    timer.close()
    student_scores = distiller.evaluate(held_out)
    teacher_after = distiller.evaluate(held_out, model="teacher")
    steps = history["train"]
    secs = [h["seconds"] for h in steps]
    return {
        "config": spec["config"],
        "mode": cfg.meta_update,
        "seed": spec["seed"],
        "threads": torch.get_num_threads(),
        "label": spec["config_label"],
        "trainable_teacher_params": distiller.trainable_teacher_parameters(),
        "student_params": sum(p.numel() for p in distiller.student.parameters()),
        "steps": len(steps),
        "step_seconds": secs,
        "median_step_seconds": statistics.median(secs),
        "mean_step_seconds": statistics.fmean(secs),
        "train": m.to_dict(),
        "phases": phase_stats(steps),
        "phase_memory_source": timer.memory_source,
        "phase_energy_source": timer.energy_source,
        "phase_energy_estimated": timer.energy_estimated,
        "student_before": student_before,
        "student": student_scores,
        "teacher_before": teacher_before,
        "teacher_after": teacher_after,
        "student_loss": [h["student_loss"] for h in steps],
        "quiz_loss": [h.get("quiz_loss") for h in steps],
    }


# ---------------------------------------------------------------------------- running
class _RoundClock:
    """Progress over the interleaved rounds and, after the first one, the expected time left."""

    def __init__(self, rounds: int, labels: list[str], seeds_left: int, progress: bool):
        self.rounds, self.labels, self.seeds_left = rounds, labels, seeds_left
        self.created = self.started = time.perf_counter()
        self.bar = tqdm(total=rounds, desc="rounds", unit="round", disable=not progress, leave=False)

    def start(self) -> None:
        """Every worker is set up: the rounds begin."""
        self.started = time.perf_counter()

    def __call__(self, r: int, seconds: list[float | None]) -> None:
        self.bar.update(1)
        if r == 0:
            now = time.perf_counter()
            setup, first = self.started - self.created, now - self.started
            steps = ", ".join(f"{lab} {s:.1f} s" for lab, s in zip(self.labels, seconds) if s is not None)
            this_seed = first * (self.rounds - 1)
            left = this_seed + (self.seeds_left - 1) * (setup + first * self.rounds)
            self.bar.write(f"first round ({first:.1f} s): {steps}; expected time left: about {fmt_minutes(left)} "
                           f"for the steps{' of every seed' if self.seeds_left > 1 else ''}, plus the final "
                           "evaluation (an estimate from the first round)", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_seed(args: argparse.Namespace, configs: list[Configuration], base_cfg: DistillConfig, seed: int,
             teacher: dict[str, Any], student_layers: list[int], seeds_left: int) -> list[dict[str, Any]]:
    """Every configuration with one seed, interleaved step by step; the workers' results."""
    s = args.settings
    specs = []
    for c in configs:
        cfg = base_cfg.replace(**c.distill, batch_size=s["batch_size"], max_steps=s["steps"], seed=seed,
                               max_length=s["max_length"], progress=False)
        specs.append({"label": f"{c.key}/seed {seed}", "config": c.key, "config_label": c.label, "seed": seed,
                      "data": args.data, "n_train": s["n_train"], "n_eval": s["n_eval"],
                      "max_length": s["max_length"], "student_layers": student_layers, "threads": args.threads,
                      "distill": cfg.to_dict(), **teacher})
    clock = _RoundClock(s["steps"], [c.label for c in configs], seeds_left, progress=not args.no_progress)
    try:
        return run_lockstep(WORKER, specs, s["steps"], on_round=clock, on_start=clock.start)
    finally:
        clock.close()
