"""Student LoRA vs full fine-tuning: the same student distilled through LoRA adapters on its
attention q/k/v projections (plus its classification head; ``distill.student_lora``) at ranks
r in {2, 4, 8, 16, 32, 64, 128, 256}, and with every weight trained. Held-out accuracy/F1 and NLL
(perplexity for a causal LM), student tokens/s, train seconds and median s/step, peak memory and
trainable student parameters. Prints a table and writes results/student_lora_vs_full.{json,md,png}.

    metakd bench student-lora-vs-full [--quick] [--ranks 2,4,8,16,32,64,128,256] [--alpha-ratio 2]
                                      [--seeds 0,1,2] [--config RUN.yaml] [--set KEY=VALUE] [--steps N]

alpha = alpha-ratio x r at every rank, so the adapters' scale alpha/r is the same across ranks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from . import sweep
from .sweep import Variant

NAME = "student_lora_vs_full"
RANKS = (2, 4, 8, 16, 32, 64, 128, 256)
QUICK_RANKS = (2, 8, 32)
ALPHA_RATIO = 2.0
FULL = "full student"
REFERENCE_RANK = 8  # the rank the notes compare with full fine-tuning (the nearest one swept)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks", help="comma-separated LoRA ranks of the student (default: "
                                   f"{','.join(map(str, RANKS))}; with --quick {','.join(map(str, QUICK_RANKS))})")
    p.add_argument("--alpha-ratio", type=float, default=ALPHA_RATIO,
                   help="LoRA alpha = ratio x r at every rank, a constant scale alpha/r (default: %(default)g)")


def parse_ranks(text: str) -> list[int]:
    """``"2,8,32"`` -> [2, 8, 32] (ascending); ConfigError unless distinct positive integers."""
    try:
        ranks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ranks = []
    if not ranks or any(r < 1 for r in ranks) or len(set(ranks)) != len(ranks):
        raise sweep.ConfigError(f"--ranks takes distinct positive integers, e.g. 2,8,32; got {text!r}")
    return sorted(ranks)


def lora_alpha(rank: int, ratio: float) -> int:
    """alpha = ratio x rank; ConfigError unless that is a positive whole number (peft's alpha is an int here)."""
    if not (math.isfinite(ratio) and ratio > 0):
        raise sweep.ConfigError(f"--alpha-ratio must be a positive number; got {ratio!r}")
    alpha = ratio * rank
    if alpha < 1 or abs(alpha - round(alpha)) > 1e-9:
        raise sweep.ConfigError(f"--alpha-ratio {ratio:g} gives alpha = {alpha:g} at rank {rank}; alpha must be a "
                                "positive whole number at every rank")
    return int(round(alpha))


def variants(args: argparse.Namespace, run: Any, teacher: dict[str, Any]) -> list[Variant]:
    """The full student, then one LoRA student per rank (ascending)."""
    ranks = parse_ranks(args.ranks) if args.ranks is not None else list(QUICK_RANKS if args.quick else RANKS)
    out = [Variant(FULL, {"distill.student_lora": False}, {"lora": False, "rank": None, "alpha": None})]
    for r in ranks:
        alpha = lora_alpha(r, args.alpha_ratio)
        out.append(Variant(f"LoRA r={r}", {"distill.student_lora": True, "distill.student_lora_r": r,
                                           "distill.student_lora_alpha": alpha},
                           {"lora": True, "rank": r, "alpha": alpha}))
    return out


# ---------------------------------------------------------------------------- summary helpers
def split(summary: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the full-student entry or None, the LoRA entries by ascending rank)."""
    full = next((e for e in summary if not e["values"]["lora"]), None)
    lora = sorted((e for e in summary if e["values"]["lora"]), key=lambda e: e["values"]["rank"])
    return full, lora


def _mean(e: dict[str, Any] | None, key: str) -> float | None:
    stat = (e or {}).get(key)
    return stat["mean"] if stat else None


def _share(e: dict[str, Any], full: dict[str, Any] | None) -> str:
    total = (full or {}).get("trainable_student_params")
    mine = e.get("trainable_student_params")
    return f"{100 * mine / total:.3g}%" if total and mine is not None else "n/a"


def student_width(run: Any, teacher: dict[str, Any]) -> int | None:
    """The student's hidden width when it is made of the teacher's blocks (read from the teacher's
    config.json); None when unknown (a separate or resized student)."""
    kind = run.student.partition(":")[0]
    if kind not in ("layers", "first", "last", "alternate"):
        return None
    config = Path(teacher.get("teacher_dir") or run.teacher) / "config.json"
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(values.get(key), int):
            return values[key]
    return None


def notes_for(summary: Sequence[dict[str, Any]], task: str, alpha_ratio: float, width: int | None = None,
              targets: Sequence[str] | None = None) -> list[str]:
    """Findings computed from the measured summary (nothing hard-coded)."""
    full, lora = split(summary)
    key, title, fmt = sweep.quality_keys(task)[0]
    lower_better = key == "perplexity"
    where = f"modules {', '.join(targets)}" if targets else "the attention q/k/v projections"
    head = " (the LM head stays frozen)" if task == "causal_lm" else " plus a trainable copy of the classification head"
    notes = [f"LoRA students: adapters on {where}{head}; alpha = {alpha_ratio:g} x r at every rank, so the adapter "
             f"scale alpha/r = {alpha_ratio:g} is the same across ranks; same student_lr as full fine-tuning"]
    if full and full.get("trainable_student_params"):
        notes.append(f"full student: {full['trainable_student_params']:,} trainable parameters (every weight, "
                     "embeddings included)")
    scored = [e for e in lora if _mean(e, key) is not None]
    if scored:
        best = (min if lower_better else max)(_mean(e, key) for e in scored)
        tied = [str(e["values"]["rank"]) for e in scored if _mean(e, key) == best]
        line = (f"best LoRA rank by {title}: r={tied[0]} ({best:{fmt}})" if len(tied) == 1 else
                f"best LoRA ranks by {title} (tied): r={', '.join(tied)} ({best:{fmt}})")
        if _mean(full, key) is not None:
            line += f"; full student {_mean(full, key):{fmt}}"
        notes.append(line)
    if full and lora:
        ref = min(lora, key=lambda e: (abs(math.log2(e["values"]["rank"] / REFERENCE_RANK)), e["values"]["rank"]))
        r = ref["values"]["rank"]
        parts = []
        q_ref, q_full = _mean(ref, key), _mean(full, key)
        if q_ref is not None and q_full is not None:
            parts.append(f"{title} {q_ref - q_full:+{fmt}} ({q_ref:{fmt}} vs {q_full:{fmt}})")
        for k, what in (("train_seconds", "train time"), ("median_step_seconds", "s/step"),
                        ("peak_memory_bytes", "peak memory"), ("tokens_per_second", "eval tokens/s")):
            a, b = _mean(ref, k), _mean(full, k)
            if a is not None and b:
                parts.append(f"{what} x{a / b:.2f}")
        if ref.get("trainable_student_params") is not None and full.get("trainable_student_params"):
            parts.append(f"trainable params {_share(ref, full)} of full")
        if parts:
            notes.append(f"LoRA r={r} vs full student: " + ", ".join(parts))
        if ref.get("trainable_student_params") is not None and full.get("trainable_student_params"):
            held = 12 * (full["trainable_student_params"] - ref["trainable_student_params"])
            notes.append(f"estimated from the parameter counts, not measured: full fine-tuning holds "
                         f"{sweep.fmt_bytes(held)} more gradients and fp32 AdamW state (12 bytes per trainable "
                         f"parameter) than LoRA r={r}; on CPU the measured peak RSS also counts model loading and "
                         "imports (peft for LoRA), which can hide that difference at small model sizes")
    if lora:
        notes.append("LoRA students are evaluated with the adapters unmerged, as trained (an extra low-rank "
                     "matmul per adapted projection; the saved student has them merged), which shows in eval tokens/s")
    if width:
        big = [e["values"]["rank"] for e in lora if e["values"]["rank"] > width]
        if big:
            notes.append(f"ranks {', '.join(map(str, big))} exceed the student's width {width}: the update BA has "
                         f"rank <= {width}, so they add parameters but no expressiveness")
    return notes


# ---------------------------------------------------------------------------- plot
def plot(summary: list[dict[str, Any]], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full, lora = split(summary)
    ranks = [e["values"]["rank"] for e in lora]
    key, title, _ = sweep.quality_keys(task)[0]
    panels = [(key, f"held-out {title}", False), ("trainable_student_params", "trainable student params", True),
              ("median_step_seconds", "s/step (median)", False), ("peak_memory_bytes", "peak memory (MiB)", False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (k, name, loglog) in zip(axes, panels):
        scale = 1 / 2**20 if k == "peak_memory_bytes" else 1.0
        if k == "trainable_student_params":
            ys = [e.get(k) or float("nan") for e in lora]
            ax.plot(ranks, ys, marker="o", label="LoRA")
            ref = (full or {}).get(k)
        else:
            stats = [e.get(k) or {"mean": float("nan"), "std": 0.0} for e in lora]
            ax.errorbar(ranks, [s["mean"] * scale for s in stats], yerr=[s["std"] * scale for s in stats],
                        marker="o", capsize=3, label="LoRA")
            ref = _mean(full, k)
            ref = ref * scale if ref is not None else None
        if ref is not None:
            ax.axhline(ref, color="tab:red", linestyle="--", label=FULL)
        ax.set_xscale("log", base=2)
        if ranks:
            ax.set_xticks(ranks, [str(r) for r in ranks])
        if loglog:
            ax.set_yscale("log")
        ax.set_xlabel("student LoRA rank r")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- report
def report(args, run, teacher, results, summary) -> int:
    full, _ = split(summary)
    own = [("variant", lambda e: e["label"]),
           ("rank", lambda e: str(e["values"]["rank"]) if e["values"]["lora"] else "—"),
           ("trainable student params", lambda e: f"{e['trainable_student_params']:,}"
            if e.get("trainable_student_params") is not None else "n/a"),
           ("% of full", lambda e: _share(e, full))]
    extra = [("train seconds", lambda e: sweep.pm(e.get("train_seconds"), ".1f", len(e["seeds"])))]
    body = sweep.table(summary, own, run.task, extra)
    notes = notes_for(summary, run.task, args.alpha_ratio, student_width(run, teacher),
                      run.distill.student_lora_target_modules)
    return sweep.finish(NAME, args, run, teacher, results, summary, body, notes,
                        lambda png: plot(summary, run.task, png), extra={"alpha_ratio": args.alpha_ratio})


def main(argv: list[str] | None = None) -> int:
    return sweep.sweep_main(NAME, argv, __doc__, _args, variants, report)


if __name__ == "__main__":
    sys.exit(main())
