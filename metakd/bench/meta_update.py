"""The main job: plain KD vs LoRA meta-update vs full meta-update on the same data, seed and
student initialisation. Prints a table and writes results/meta_update.{json,md,png}.

    metakd bench meta-update [--quick] [--data PATH|glue/sst2] [--steps N] [--out results]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import data as data_mod
from ..config import DistillConfig
from ..distiller import MetaDistiller
from ..finetune import cache_key, cached_model, evaluate_model, finetune_classifier
from ..models import embedded_teacher_path, load_classifier, student_from_teacher, use_eager_attention
from ..telemetry import EnergyMeter, measure
from .report import fmt_bytes, machine_line, markdown_table, run_worker, serve_worker, write_results

NAME = "meta_update"
MODES = ("none", "lora", "full")
MODE_LABELS = {"none": "plain KD", "lora": "LoRA meta-update", "full": "full meta-update"}

# Settings of the full run and of --quick (tiny random models, a slice of the data).
FULL = dict(n_train=2000, n_eval=500, steps=100, finetune_epochs=2, batch_size=32, max_length=64)
QUICK = dict(n_train=600, n_eval=200, steps=12, finetune_epochs=3, batch_size=16, max_length=48)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metakd bench meta-update", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random models and a data slice (about a minute)")
    p.add_argument("--data", default="embedded",
                   help="'embedded' (generated sentiment task), a .tsv/.csv/.jsonl file or a directory with "
                        "train/dev files (e.g. ../shared/data/sst2), or 'glue/sst2' from the hub")
    p.add_argument("--steps", type=int, help="training steps per mode")
    p.add_argument("--n-train", type=int, help="training examples (quiz split carved from these)")
    p.add_argument("--n-eval", type=int, help="held-out evaluation examples")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of none,lora,full")
    p.add_argument("--config", help="YAML with DistillConfig overrides (meta_update is set per mode)")
    p.add_argument("--out", default="results", help="directory for the result files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for key in ("steps", "n_train", "n_eval", "batch_size"):
        if getattr(args, key) is not None:
            if getattr(args, key) < 1:
                p.error(f"--{key.replace('_', '-')} must be >= 1")
            settings[key] = getattr(args, key)
    args.settings = settings
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.mode_list if m not in MODES]
    if bad or not args.mode_list:
        p.error(f"--modes takes a subset of {','.join(MODES)}; got {args.modes!r}")
    return args


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
    key = cache_key(kind="meta-update-teacher", quick=args.quick, data=args.data, n_train=s["n_train"],
                    seed=args.seed, epochs=s["finetune_epochs"], max_length=s["max_length"], num_labels=num_labels,
                    version=1)

    def build():
        if args.quick:
            model = _tiny_teacher(tokenizer.vocab_size, num_labels, args.seed)
            lr = 1e-3
        else:
            model, _ = load_classifier(tokenizer_dir, num_labels)
            lr = 5e-5
        print(f"fine-tuning the teacher on {len(train)} examples ({s['finetune_epochs']} epochs); "
              "cached for later runs", file=sys.stderr)
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


# ---------------------------------------------------------------------------- one mode (worker)
def run_mode(spec: dict[str, Any]) -> dict[str, Any]:
    """Distil with one meta mode; runs in its own process (see report.run_worker)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

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
    teacher_before = evaluate_model(teacher, held_out, pad_id=pad)

    distiller = MetaDistiller(teacher, student, cfg)
    with measure(energy=EnergyMeter()) as m:
        history = distiller.fit(train)
    student_scores = distiller.evaluate(held_out)
    teacher_after = distiller.evaluate(held_out, model="teacher")
    steps = history["train"]
    secs = [h["seconds"] for h in steps]
    return {
        "mode": cfg.meta_update,
        "label": MODE_LABELS[cfg.meta_update],
        "trainable_teacher_params": distiller.trainable_teacher_parameters(),
        "student_params": sum(p.numel() for p in distiller.student.parameters()),
        "steps": len(steps),
        "median_step_seconds": statistics.median(secs),
        "mean_step_seconds": statistics.fmean(secs),
        "train": m.to_dict(),
        "student": student_scores,
        "teacher_before": teacher_before,
        "teacher_after": teacher_after,
        "student_loss": [h["student_loss"] for h in steps],
        "quiz_loss": [h.get("quiz_loss") for h in steps],
    }


# ---------------------------------------------------------------------------- report
def build_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        t = r["train"]
        energy = "n/a" if t["energy_joules"] is None else f"{t['energy_joules']:.0f} J"
        if t["energy_joules"] is not None and t["energy_estimated"]:
            energy += " (estimated)"
        rows.append([
            r["label"], f"{r['trainable_teacher_params']:,}", f"{r['median_step_seconds']:.3f}",
            fmt_bytes(t["peak_memory_bytes"]), energy,
            f"{r['student']['accuracy']:.4f}", f"{r['student']['f1']:.4f}",
            f"{r['teacher_before']['accuracy']:.4f} → {r['teacher_after']['accuracy']:.4f}",
        ])
    cols = ["mode", "trainable teacher params", "s/step (median)", "peak memory", "energy",
            "student acc", "student F1", "teacher acc before → after"]
    return markdown_table(cols, rows)


def savings(results: list[dict[str, Any]]) -> list[str]:
    by = {r["mode"]: r for r in results}
    if "lora" not in by or "full" not in by:
        return []
    lo, fu = by["lora"], by["full"]
    lines = [
        f"LoRA / full meta-update: trainable teacher parameters {lo['trainable_teacher_params'] / fu['trainable_teacher_params']:.4f}x, "
        f"time per step {lo['median_step_seconds'] / fu['median_step_seconds']:.2f}x, "
        f"peak memory {lo['train']['peak_memory_bytes'] / fu['train']['peak_memory_bytes']:.2f}x",
    ]
    if "none" in by:
        lines.append(f"LoRA meta-step / plain KD step: {lo['median_step_seconds'] / by['none']['median_step_seconds']:.2f}x time")
    return lines


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = [
        ("seconds per step (median)", [r["median_step_seconds"] for r in results]),
        ("peak memory (MiB)", [(r["train"]["peak_memory_bytes"] or 0) / 2**20 for r in results]),
        ("student accuracy", [r["student"]["accuracy"] for r in results]),
    ]
    colors = ["#888888", "#2a9d8f", "#e76f51"][: len(results)]
    for ax, (title, values) in zip(axes, panels):
        ax.bar(labels, values, color=colors)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, run_mode)

    s = args.settings
    base_cfg = DistillConfig.from_yaml(args.config) if args.config else DistillConfig(
        student_lr=5e-4, teacher_lr=2e-5, pilot_lr=1e-2, quiz_fraction=0.1)
    splits = data_mod.load_task(args.data, s["n_train"], s["n_eval"], args.seed)  # fails fast on bad data
    labels = [y for _, y in splits["train"]]
    if not labels or not splits["eval"]:
        raise data_mod.DataError(f"data {args.data!r} has an empty train or eval split")
    num_labels = max(labels) + 1
    print(f"data: {args.data}: {len(splits['train'])} train, {len(splits['eval'])} eval examples, "
          f"{num_labels} labels", file=sys.stderr)
    teacher = prepare_teacher(args, splits, num_labels)
    student_layers = [0, 3] if args.quick else [0, 5]
    results = []
    for i, mode in enumerate(args.mode_list, 1):
        print(f"[{i}/{len(args.mode_list)}] {MODE_LABELS[mode]}: {s['steps']} steps", file=sys.stderr)
        cfg = base_cfg.replace(meta_update=mode, batch_size=s["batch_size"], max_steps=s["steps"], seed=args.seed,
                               max_length=s["max_length"], progress=not args.no_progress)
        spec = {"label": mode, "seed": args.seed, "data": args.data, "n_train": s["n_train"], "n_eval": s["n_eval"],
                "max_length": s["max_length"], "student_layers": student_layers, "distill": cfg.to_dict(), **teacher}
        results.append(run_worker(__name__, spec))

    table = build_table(results)
    notes = savings(results) + [
        f"{s['steps']} steps per mode, batch {s['batch_size']}, seed {args.seed}; data {args.data} "
        f"({s['n_train']} train incl. a {base_cfg.quiz_fraction:.0%} quiz split, {s['n_eval']} held out)",
        f"teacher: {'tiny random BERT (4 layers, width 64)' if args.quick else 'pretrained MiniLM-L6-H384'} fine-tuned on the task; "
        f"student: teacher blocks {student_layers}",
        "peak memory: peak RSS of one process per mode (includes loading the models)",
        "energy: " + (results[0]["train"]["energy_source"] if results else "n/a"),
    ]
    payload = {"benchmark": NAME, "quick": args.quick, "settings": s, "seed": args.seed, "data": args.data,
               "student_layers": student_layers, "config": base_cfg.to_dict(), "teacher": teacher,
               "results": results, "measured": {"time": True, "memory": True,
                                                "energy": not any(r["train"]["energy_estimated"] for r in results)}}
    paths = write_results(args.out, NAME, payload, table, notes)
    plot(results, Path(args.out) / f"{NAME}.png")
    print(f"\nMachine: {machine_line(payload['machine'])}\n")
    print(table)
    print()
    for n in notes:
        print(f"- {n}")
    print(f"\nwrote {paths['json']}, {paths['md']}, {Path(args.out) / f'{NAME}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
