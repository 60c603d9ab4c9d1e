"""The main job: plain KD vs LoRA meta-update vs full meta-update on the same data, seed and
student initialisation. Prints a table and writes results/meta_update.{json,md,png}.

    metakd bench meta-update [--quick] [--data PATH|glue/sst2] [--steps N] [--seeds 0,1,2] [--out results]

With several seeds every mode runs once per seed (the teacher is fine-tuned once, with the first
seed); the table reports mean ± standard deviation over seeds. A second table breaks every step
down by phase (teacher forward, pilot step, quiz, meta-gradient, teacher step, student step):
seconds, CPU seconds, peak memory and energy per phase, from ``telemetry.PhaseTimer``.
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
from ..telemetry import EnergyMeter, PhaseTimer, measure
from .report import fmt_bytes, markdown_table, print_report, run_worker, serve_worker, write_results

NAME = "meta_update"
MODES = ("none", "lora", "full")
MODE_LABELS = {"none": "plain KD", "lora": "LoRA meta-update", "full": "full meta-update"}

# Settings of the full run and of --quick (tiny random models, a slice of the data).
FULL = dict(n_train=2000, n_eval=500, steps=100, finetune_epochs=2, batch_size=32, max_length=64)
QUICK = dict(n_train=600, n_eval=200, steps=12, finetune_epochs=3, batch_size=16, max_length=48)
# The phases MetaDistiller times, in the order of a meta-step; META_PHASES make up the meta-gradient
# and the teacher update (what plain KD does not do).
PHASES = ("teacher_forward", "pilot", "quiz", "directional_derivative", "teacher_backward", "teacher_step",
          "student_step")
META_PHASES = ("pilot", "quiz", "directional_derivative", "teacher_backward", "teacher_step")


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
    p.add_argument("--teacher-n-train", type=int,
                   help="examples the teacher is fine-tuned on (default: the students' training examples)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, default=0, help="seed of a single-seed run")
    p.add_argument("--seeds", help="comma-separated seeds (e.g. 0,1,2): every mode once per seed, mean ± std")
    p.add_argument("--student-layers", help="teacher blocks the student keeps, e.g. 0,5 (default: first and last)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: torch's choice)")
    p.add_argument("--name", default=NAME, help="stem of the result files (default: %(default)s)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of none,lora,full")
    p.add_argument("--config", help="YAML with DistillConfig overrides (meta_update is set per mode)")
    p.add_argument("--out", default="results", help="directory for the result files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.teacher_n_train is not None and args.teacher_n_train < 1:
        p.error("--teacher-n-train must be >= 1")
    for key in ("steps", "n_train", "n_eval", "batch_size"):
        if getattr(args, key) is not None:
            if getattr(args, key) < 1:
                p.error(f"--{key.replace('_', '-')} must be >= 1")
            settings[key] = getattr(args, key)
    args.settings = settings
    try:
        args.seed_list = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else [args.seed]
        args.layer_list = ([int(x) for x in args.student_layers.split(",") if x.strip()]
                           if args.student_layers else None)
    except ValueError:
        p.error("--seeds and --student-layers take comma-separated integers")
    if not args.seed_list or len(set(args.seed_list)) != len(args.seed_list):
        p.error(f"--seeds must list distinct integers; got {args.seeds!r}")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    args.seed = args.seed_list[0]
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
    key = cache_key(kind="meta-update-teacher", quick=args.quick, data=args.data, n_train=args.teacher_n_train or s["n_train"],
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
    teacher_before = evaluate_model(teacher, held_out, pad_id=pad)

    timer = PhaseTimer(next(student.parameters()).device, memory=True, energy=EnergyMeter())
    distiller = MetaDistiller(teacher, student, cfg, timer=timer)
    with measure(energy=EnergyMeter()) as m:
        history = distiller.fit(train)
    timer.close()
    student_scores = distiller.evaluate(held_out)
    teacher_after = distiller.evaluate(held_out, model="teacher")
    steps = history["train"]
    secs = [h["seconds"] for h in steps]
    return {
        "mode": cfg.meta_update,
        "seed": spec["seed"],
        "threads": torch.get_num_threads(),
        "label": MODE_LABELS[cfg.meta_update],
        "trainable_teacher_params": distiller.trainable_teacher_parameters(),
        "student_params": sum(p.numel() for p in distiller.student.parameters()),
        "steps": len(steps),
        "median_step_seconds": statistics.median(secs),
        "mean_step_seconds": statistics.fmean(secs),
        "train": m.to_dict(),
        "phases": phase_stats(steps),
        "phase_memory_source": timer.memory_source,
        "phase_energy_source": timer.energy_source,
        "phase_energy_estimated": timer.energy_estimated,
        "student": student_scores,
        "teacher_before": teacher_before,
        "teacher_after": teacher_after,
        "student_loss": [h["student_loss"] for h in steps],
        "quiz_loss": [h.get("quiz_loss") for h in steps],
    }


def phase_stats(steps: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per phase over the steps of one run (from the ``time_/cpu_/mem_/energy_<phase>`` step
    metrics): total and mean seconds per step (a step without the phase counts as 0), CPU
    seconds, the peak memory over the steps and the energy."""
    names = [p for p in PHASES if any(f"time_{p}" in h for h in steps)]
    names += sorted({k[5:] for h in steps for k in h if k.startswith("time_")} - set(names))
    n = max(len(steps), 1)
    out: dict[str, dict[str, Any]] = {}
    for p in names:
        secs = [h.get(f"time_{p}", 0.0) for h in steps]
        cpu = sum(h.get(f"cpu_{p}", 0.0) for h in steps)
        mem = [h[f"mem_{p}"] for h in steps if f"mem_{p}" in h]
        energy = [h[f"energy_{p}"] for h in steps if f"energy_{p}" in h]
        out[p] = {
            "steps": sum(f"time_{p}" in h for h in steps),
            "total_seconds": sum(secs),
            "mean_seconds_per_step": sum(secs) / n,
            "median_seconds_per_step": statistics.median(secs) if secs else 0.0,
            "cpu_seconds": cpu,
            "mean_cpu_seconds_per_step": cpu / n,
            "peak_memory_bytes": int(max(mem)) if mem else None,
            "energy_joules": sum(energy) if energy else None,
            "energy_joules_per_step": sum(energy) / n if energy else None,
        }
    return out


# ---------------------------------------------------------------------------- report
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per mode: mean and sample standard deviation over seeds of scores, time, memory."""
    out = []
    for mode in dict.fromkeys(r["mode"] for r in results):
        runs = [r for r in results if r["mode"] == mode]
        entry: dict[str, Any] = {"mode": mode, "label": runs[0]["label"], "seeds": [r["seed"] for r in runs],
                                 "trainable_teacher_params": runs[0]["trainable_teacher_params"]}
        series = {
            "accuracy": [r["student"]["accuracy"] for r in runs],
            "f1": [r["student"]["f1"] for r in runs],
            "precision": [r["student"]["precision"] for r in runs],
            "recall": [r["student"]["recall"] for r in runs],
            "median_step_seconds": [r["median_step_seconds"] for r in runs],
            "peak_memory_bytes": [r["train"]["peak_memory_bytes"] or 0 for r in runs],
            "train_seconds": [r["train"]["seconds"] for r in runs],
            "teacher_accuracy_after": [r["teacher_after"]["accuracy"] for r in runs],
        }
        energies = [r["train"]["energy_joules"] for r in runs]
        if all(e is not None for e in energies):
            series["energy_joules"] = energies
        entry["energy_estimated"] = any(r["train"]["energy_estimated"] for r in runs)
        entry["teacher_accuracy_before"] = runs[0]["teacher_before"]["accuracy"]
        for key, values in series.items():
            entry[key] = dict(zip(("mean", "std"), _mean_std(values)))
        entry["phases"] = _summarize_phases(runs)
        entry["phase_energy_estimated"] = any(r.get("phase_energy_estimated", True) for r in runs)
        out.append(entry)
    return out


def _summarize_phases(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per phase: mean and std over seeds of seconds, CPU seconds and energy per step and of the
    peak memory (None where a run did not track it)."""
    names = list(dict.fromkeys(p for r in runs for p in r.get("phases", {})))
    out: dict[str, dict[str, Any]] = {}
    for p in names:
        stats = [r["phases"].get(p) for r in runs]
        entry: dict[str, Any] = {}
        for key, field in (("seconds_per_step", "mean_seconds_per_step"),
                           ("cpu_seconds_per_step", "mean_cpu_seconds_per_step"),
                           ("peak_memory_bytes", "peak_memory_bytes"),
                           ("energy_joules_per_step", "energy_joules_per_step")):
            values = [0.0 if st is None and key != "peak_memory_bytes" else (st or {}).get(field) for st in stats]
            entry[key] = (dict(zip(("mean", "std"), _mean_std(values)))
                          if values and all(v is not None for v in values) else None)
        out[p] = entry
    return out


def _pm(stat: dict[str, float], fmt: str, n: int) -> str:
    return f"{stat['mean']:{fmt}} ± {stat['std']:{fmt}}" if n > 1 else f"{stat['mean']:{fmt}}"


def build_table(summary: list[dict[str, Any]]) -> str:
    rows = []
    for e in summary:
        n = len(e["seeds"])
        if "energy_joules" in e:
            energy = f"{e['energy_joules']['mean']:.0f} J" + (" (estimated)" if e["energy_estimated"] else "")
        else:
            energy = "n/a"
        memory = fmt_bytes(e["peak_memory_bytes"]["mean"])
        if n > 1:
            memory += f" ± {fmt_bytes(e['peak_memory_bytes']['std'])}"
        rows.append([
            e["label"], f"{e['trainable_teacher_params']:,}", _pm(e["median_step_seconds"], ".3f", n),
            memory, energy, _pm(e["accuracy"], ".4f", n), _pm(e["f1"], ".4f", n),
            f"{e['teacher_accuracy_before']:.4f} → {_pm(e['teacher_accuracy_after'], '.4f', n)}",
        ])
    cols = ["mode", "trainable teacher params", "s/step (median)", "peak memory", "energy",
            "student acc", "student F1", "teacher acc before → after"]
    return markdown_table(cols, rows)


def phase_table(summary: list[dict[str, Any]]) -> str:
    """Mode x phase: mean seconds per step in the phase (and its share of the step), CPU seconds,
    the peak memory during the phase and the energy per step in the phase; mean over seeds."""
    rows = []
    for e in summary:
        n = len(e["seeds"])
        step = sum(st["seconds_per_step"]["mean"] for st in e["phases"].values() if st["seconds_per_step"])
        for p, st in e["phases"].items():
            secs = st["seconds_per_step"]
            energy = st["energy_joules_per_step"]
            rows.append([
                e["label"], p, _pm(secs, ".4f", n) if secs else "n/a",
                f"{secs['mean'] / step:.0%}" if secs and step > 0 else "n/a",
                _pm(st["cpu_seconds_per_step"], ".4f", n) if st["cpu_seconds_per_step"] else "n/a",
                fmt_bytes(st["peak_memory_bytes"]["mean"]) if st["peak_memory_bytes"] else "n/a",
                (f"{energy['mean']:.3f} J" + (" (estimated)" if e["phase_energy_estimated"] else "")) if energy else "n/a",
            ])
    return markdown_table(["mode", "phase", "s/step (mean)", "share of timed step", "CPU s/step", "peak memory",
                           "energy/step"], rows)


def per_seed_table(results: list[dict[str, Any]]) -> str:
    rows = [[r["label"], r["seed"], f"{r['student']['accuracy']:.4f}", f"{r['student']['f1']:.4f}",
             f"{r['median_step_seconds']:.3f}", fmt_bytes(r["train"]["peak_memory_bytes"]),
             f"{r['teacher_after']['accuracy']:.4f}"] for r in results]
    return markdown_table(["mode", "seed", "student acc", "student F1", "s/step (median)", "peak memory",
                           "teacher acc after"], rows)


def savings(summary: list[dict[str, Any]]) -> list[str]:
    by = {e["mode"]: e for e in summary}
    if "lora" not in by or "full" not in by:
        return []
    lo, fu = by["lora"], by["full"]
    lines = [
        f"LoRA / full meta-update: trainable teacher parameters {lo['trainable_teacher_params'] / fu['trainable_teacher_params']:.4f}x, "
        f"time per step {lo['median_step_seconds']['mean'] / fu['median_step_seconds']['mean']:.2f}x, "
        f"peak memory {lo['peak_memory_bytes']['mean'] / max(fu['peak_memory_bytes']['mean'], 1):.2f}x",
    ]
    if "none" in by:
        lines.append("LoRA meta-step / plain KD step: "
                     f"{lo['median_step_seconds']['mean'] / by['none']['median_step_seconds']['mean']:.2f}x time")
    parts = []
    for p in META_PHASES:
        a, b = lo.get("phases", {}).get(p), fu.get("phases", {}).get(p)
        if not a or not b:
            continue
        ratios = []
        for key, what in (("seconds_per_step", "time"), ("peak_memory_bytes", "peak memory"),
                          ("energy_joules_per_step", "energy")):
            if a[key] and b[key] and b[key]["mean"] > 0:
                ratios.append(f"{what} {a[key]['mean'] / b[key]['mean']:.2f}x")
        if ratios:
            parts.append(f"{p} {', '.join(ratios)}")
    if parts:
        lines.append("LoRA / full meta-update per meta-gradient phase: " + "; ".join(parts))
    return lines


def measured_flags(results: list[dict[str, Any]]) -> dict[str, Any]:
    """For every figure of the report: True where measured, False where estimated, None where not
    available (``sources`` in the payload says by what)."""
    energy_measured = not any(r["train"]["energy_estimated"] for r in results)
    phase_energy = not any(r.get("phase_energy_estimated", True) for r in results)
    phase_memory = all(not r.get("phase_memory_source", "n/a").startswith("n/a") for r in results)
    return {
        "trainable_teacher_params": True, "student_params": True,
        "median_step_seconds": True, "mean_step_seconds": True, "train_seconds": True, "train_cpu_seconds": True,
        "peak_memory_bytes": True, "energy_joules": energy_measured,
        "accuracy": True, "f1": True, "precision": True, "recall": True,
        "teacher_accuracy_before": True, "teacher_accuracy_after": True,
        "phases": {"seconds_per_step": True, "cpu_seconds_per_step": True,
                   "peak_memory_bytes": True if phase_memory else None, "energy_joules_per_step": phase_energy},
        # the coarse flags of earlier reports
        "time": True, "memory": True, "energy": energy_measured,
    }


def figure_sources(results: list[dict[str, Any]]) -> dict[str, str]:
    """What each measured or estimated figure comes from."""
    first = results[0] if results else {}
    return {
        "seconds": "wall clock (time.perf_counter)",
        "peak_memory_bytes": first.get("train", {}).get("memory_source", "n/a") + " of the worker process",
        "energy_joules": first.get("train", {}).get("energy_source", "n/a"),
        "phases.seconds_per_step": "wall clock per phase (PhaseTimer)",
        "phases.cpu_seconds_per_step": "getrusage user + system time per phase",
        "phases.peak_memory_bytes": first.get("phase_memory_source", "n/a"),
        "phases.energy_joules_per_step": first.get("phase_energy_source", "n/a"),
    }


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [e["label"] for e in summary]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [
        ("seconds per step (median)", [e["median_step_seconds"] for e in summary], 1.0),
        ("peak memory (MiB)", [e["peak_memory_bytes"] for e in summary], 2.0**-20),
        ("student accuracy", [e["accuracy"] for e in summary], 1.0),
    ]
    colors = ["#888888", "#2a9d8f", "#e76f51"][: len(summary)]
    for ax, (title, stats, scale) in zip(axes, panels):
        ax.bar(labels, [st["mean"] * scale for st in stats], yerr=[st["std"] * scale for st in stats],
               color=colors, capsize=4)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=15)
    ax = axes[3]  # stacked: where the time of a step goes
    names = [p for p in PHASES if any(p in e["phases"] for e in summary)]
    names += [p for e in summary for p in e["phases"] if p not in names]
    bottom = [0.0] * len(summary)
    cmap = plt.get_cmap("tab10")
    for i, p in enumerate(names):
        heights = [((e["phases"].get(p) or {}).get("seconds_per_step") or {"mean": 0.0})["mean"] for e in summary]
        ax.bar(labels, heights, bottom=bottom, color=cmap(i % 10), label=p)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_title("seconds per step by phase (mean)")
    ax.tick_params(axis="x", labelrotation=15)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, run_mode)

    s = args.settings
    if args.threads:
        torch.set_num_threads(args.threads)
    base_cfg = DistillConfig.from_yaml(args.config) if args.config else DistillConfig(
        student_lr=5e-4, teacher_lr=2e-5, pilot_lr=1e-2, quiz_fraction=0.1)
    splits = data_mod.load_task(args.data, s["n_train"], s["n_eval"], args.seed)  # fails fast on bad data
    if not splits["train"] or not splits["eval"]:
        raise data_mod.DataError(f"data {args.data!r} has an empty train or eval split")
    num_labels = data_mod.infer_num_labels(splits)
    print(f"data: {args.data}: {len(splits['train'])} train, {len(splits['eval'])} eval examples, "
          f"{num_labels} labels", file=sys.stderr)
    teacher_splits = splits
    if args.teacher_n_train:
        teacher_splits = data_mod.load_task(args.data, args.teacher_n_train, s["n_eval"], args.seed)
    teacher = prepare_teacher(args, teacher_splits, num_labels)
    student_layers = args.layer_list or ([0, 3] if args.quick else [0, 5])
    results = []
    runs = [(seed, mode) for seed in args.seed_list for mode in args.mode_list]
    for i, (seed, mode) in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {MODE_LABELS[mode]}, seed {seed}: {s['steps']} steps", file=sys.stderr)
        cfg = base_cfg.replace(meta_update=mode, batch_size=s["batch_size"], max_steps=s["steps"], seed=seed,
                               max_length=s["max_length"], progress=not args.no_progress)
        spec = {"label": f"{mode}/seed {seed}", "seed": seed, "data": args.data, "n_train": s["n_train"],
                "n_eval": s["n_eval"], "max_length": s["max_length"], "student_layers": student_layers,
                "threads": args.threads, "distill": cfg.to_dict(), **teacher}
        results.append(run_worker(__name__, spec))

    summary = summarize(results)
    table = build_table(summary)
    seeds = ", ".join(map(str, args.seed_list))
    notes = savings(summary) + [
        f"{s['steps']} steps per mode, batch {s['batch_size']}, seeds {seeds}"
        + (" (mean ± sample std over seeds)" if len(args.seed_list) > 1 else "")
        + f"; data {args.data} ({len(splits['train'])} train examples incl. a {base_cfg.quiz_fraction:.0%} quiz "
        f"split, {len(splits['eval'])} held out)",
        f"teacher: {'tiny random BERT (4 layers, width 64)' if args.quick else 'pretrained MiniLM-L6-H384'} fine-tuned on "
        f"{len(teacher_splits['train'])} training examples (seed {args.seed}), shared by every run; "
        f"student: teacher blocks {student_layers}",
        f"torch threads per run: {results[0]['threads']}" if results else "",
        "peak memory: peak RSS of one process per run (includes loading the models)",
        "energy: " + (results[0]["train"]["energy_source"] if results else "n/a"),
        "per phase: wall and CPU seconds per step (a phase a step skips counts as 0), peak memory during the "
        f"phase ({results[0]['phase_memory_source'] if results else 'n/a'}; absolute, models included), energy "
        f"({results[0]['phase_energy_source'] if results else 'n/a'}); the meta-gradient phases are pilot, quiz, "
        "directional_derivative and teacher_backward, then teacher_step updates the teacher",
    ]
    if len(args.seed_list) > 1:
        table += "\n\nPer seed:\n\n" + per_seed_table(results)
    table += "\n\nPer phase (mean over the steps" + (" and seeds" if len(args.seed_list) > 1 else "") + "):\n\n"
    table += phase_table(summary)
    payload = {"benchmark": args.name, "quick": args.quick, "settings": s, "seeds": args.seed_list, "data": args.data,
               "n_train": len(splits["train"]), "n_eval": len(splits["eval"]), "threads": args.threads,
               "student_layers": student_layers, "config": base_cfg.to_dict(), "teacher": teacher,
               "summary": summary, "results": results,
               "measured": measured_flags(results), "sources": figure_sources(results)}
    notes = [n for n in notes if n]
    paths = write_results(args.out, args.name, payload, table, notes)
    png = Path(args.out) / f"{args.name}.png"
    plot(summary, png)
    print_report(payload, table, notes, [paths["json"], paths["md"], png])
    return 0


if __name__ == "__main__":
    sys.exit(main())
