"""The main job: plain KD vs LoRA meta-update vs full meta-update on the same data, seed and
student initialisation. Prints a table and writes results/meta_update.{json,md,png}.

    metakd bench meta-update [--quick] [--data auto|PATH|glue/sst2] [--steps N] [--seeds 0,1,2] [--out results]
                             [--teacher-layers all,top:2] [--meta-batch-size M]

The default run distils the bundled MiniLM-L6 teacher, fine-tuned on 2,000 training sentences
(``--data auto``: GLUE SST-2 from the Hugging Face hub when the hub is reachable, else the embedded
generated task's easy mix, ``embedded:easy``; it never looks outside the checkout), into a 2-layer
student for 40 steps of 32 per mode and scores every student on the whole dev split, before and
after, against the teacher (in points). docs/main-job.md has the probes behind these settings.

Every configuration (mode) runs in its own process, and the processes take one step each in turn
(``lockstep``): a background load falls on every mode in the same rounds, and the time ratios
are medians of per-round ratios, printed with their spread (IQR, min–max). The expected time
left is printed after the first round. With several seeds every mode runs once per seed (the
teacher is fine-tuned once, with the first seed); the table reports mean ± standard deviation
over seeds. A phase table breaks every step down (teacher forward, pilot step, quiz,
meta-gradient, teacher step, student step): seconds, CPU seconds, peak memory and energy per
phase, from ``telemetry.PhaseTimer``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .. import data as data_mod
from ..config import DistillConfig
from ..data.hub import hub_status
from ..messages import hub_progress_bars
from .meta_update_report import (build_table, figure_sources, learning_notes, measured_flags, per_seed_table,
                                 phase_table, plot, ratio_table, savings, summarize, timing_ratios)
from .meta_update_runs import (COMPARISONS, MODE_LABELS, MODES, NAME, WORKER, Configuration, comparisons,
                               configurations, fmt_minutes, prepare_teacher, run_mode, run_seed)
from .report import parse_meta_cost_args, print_report, serve_worker, write_results

# the runs (teacher, configurations, workers, rounds) live in meta_update_runs, the tables in meta_update_report;
# the runs' names are this module's too
__all__ = [
    "AUTO_EMBEDDED", "AUTO_HUB", "AUTO_HUB_REPO", "COMPARISONS", "Configuration", "DISTILL", "FULL", "MODES",
    "MODE_LABELS", "NAME", "OFFLINE_VARIABLES", "QUICK", "REACH_TIMEOUT", "STUDENT_LAYERS", "WORKER", "comparisons",
    "configurations", "hub_progress_bars", "load_data", "main", "parse_args", "prepare_teacher", "resolve_data",
    "run_mode", "run_seed",
]

# Settings of the full run and of --quick (tiny random models, a slice of the data).
FULL = dict(n_train=2000, n_eval=None, steps=40, finetune_epochs=2, batch_size=32, max_length=64)
QUICK = dict(n_train=600, n_eval=200, steps=12, finetune_epochs=1, batch_size=16, max_length=48)
# --data auto: GLUE SST-2 from the hub when it is reachable, else the embedded task's easy mix
AUTO_HUB = "glue/sst2"
AUTO_HUB_REPO = "nyu-mll/glue"  # the hub repository of AUTO_HUB (data.tasks.HUB_TASKS)
AUTO_EMBEDDED = "embedded:easy"
REACH_TIMEOUT = 5.0  # seconds the reachability check waits for the hub (one request, no retries)
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
STUDENT_LAYERS = (0, 5)  # the teacher blocks the default student keeps
# DistillConfig of a run without --config (meta_update, batch size, steps and seed are set per run)
DISTILL = dict(student_lr=5e-4, teacher_lr=2e-5, pilot_lr=1e-2, quiz_fraction=0.1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metakd bench meta-update", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random models and a data slice (about a minute)")
    p.add_argument("--data", default="auto",
                   help="'auto' (default): GLUE SST-2 from the Hugging Face hub when it is reachable (and "
                        "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are not set), else 'embedded:easy' (the generated "
                        "sentiment task, half of it compositional); --quick always takes 'embedded'; or a "
                        ".tsv/.csv/.jsonl file, a directory with train/dev files (e.g. ../shared/data/sst2), "
                        "'glue/sst2', 'embedded' (the standard, harder mix) or 'embedded:SHARE'")
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
    p.add_argument("--teacher-layers", default="all",
                   help="comma-separated teacher_layers values for the meta modes, e.g. all,top:2: a configuration "
                        "per meta mode and value (default: all)")
    p.add_argument("--meta-batch-size", type=int, help="rows of each batch the meta-gradient uses (default: all)")
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
    parse_meta_cost_args(p, args, settings["batch_size"])
    return args


def _offline_variable() -> str | None:
    """The first of OFFLINE_VARIABLES set to a true value (1, ON, YES, TRUE), else None."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


def resolve_data(data: str, quick: bool, timeout: float = REACH_TIMEOUT) -> tuple[str, str | None]:
    """``--data auto``: GLUE SST-2 from the Hugging Face hub (through ``datasets``, cached as it
    caches) when the hub is reachable, else the embedded task's easy mix. It never looks outside
    the checkout: a local copy of SST-2 is named with ``--data PATH``. Offline (HF_HUB_OFFLINE or
    HF_DATASETS_OFFLINE set) counts as unreachable and asks nothing; otherwise one request of at
    most ``timeout`` seconds, without retries, decides. --quick always takes the embedded task.
    Returns the data spec and a line saying which data and why (None for data other than auto)."""
    if data != "auto":
        return data, None
    if quick:
        return "embedded", "--data auto: the embedded generated task (--quick always takes it)"
    fallback = (f"so the embedded generated task's easy mix ({AUTO_EMBEDDED}: half its sentences compositional) "
                "is used; pass --data glue/sst2 online, or --data PATH for a local copy of SST-2")
    variable = _offline_variable()
    if variable:
        return AUTO_EMBEDDED, f"--data auto: {variable} is set (offline), {fallback}"
    status, why = hub_status(AUTO_HUB_REPO, "dataset", timeout=timeout)
    if status in ("reachable", "cached"):
        where = "in the local hub cache" if status == "cached" else "the Hugging Face hub is reachable"
        return AUTO_HUB, f"--data auto: GLUE SST-2 ({AUTO_HUB}, {where}; cached by datasets for later runs)"
    reason = {"offline": "the Hugging Face hub is switched off", "missing": f"the hub has no {AUTO_HUB_REPO}",
              }.get(status, f"the Hugging Face hub is unreachable (one request, timeout {timeout:g} s)")
    return AUTO_EMBEDDED, f"--data auto: {reason}{f' ({why})' if why else ''}, {fallback}"


def load_data(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve ``--data auto`` (sets ``args.data`` and ``args.data_note``), print which data the
    run takes and why, and load the task. When auto chose the hub and the load fails (a cache
    that cannot be read offline, a network that drops), the run falls back to the embedded task."""
    s = args.settings
    requested = args.data
    args.data, args.data_note = resolve_data(args.data, args.quick)
    if args.data_note:
        print(args.data_note, file=sys.stderr, flush=True)
    try:
        with hub_progress_bars(not args.no_progress, datasets_too=_from_hub(args.data)):
            return data_mod.load_task(args.data, s["n_train"], s["n_eval"], args.seed)  # fails fast on bad data
    except data_mod.DataError as exc:
        if requested != "auto" or args.data != AUTO_HUB:
            raise
        first = (str(exc).splitlines() or [""])[0]
        args.data, args.data_note = AUTO_EMBEDDED, (f"--data auto: loading {AUTO_HUB} failed ({first}), so the "
                                                    f"embedded generated task's easy mix ({AUTO_EMBEDDED}) is used")
        print(args.data_note, file=sys.stderr, flush=True)
        return data_mod.load_task(args.data, s["n_train"], s["n_eval"], args.seed)


def _from_hub(data: str) -> bool:
    return data in data_mod.HUB_TASKS or data.startswith("hub:")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, run_mode)
    with hub_progress_bars(not args.no_progress):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    s = args.settings
    wall = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    base_cfg = DistillConfig.from_yaml(args.config) if args.config else DistillConfig(**DISTILL)
    splits = load_data(args)
    if not splits["train"] or not splits["eval"]:
        raise data_mod.DataError(f"data {args.data!r} has an empty train or eval split")
    num_labels = data_mod.infer_num_labels(splits)
    configs = configurations(args)
    print(f"data: {args.data}: {len(splits['train'])} train, {len(splits['eval'])} eval examples, "
          f"{num_labels} labels", file=sys.stderr)
    print(f"plan: {len(configs)} configurations ({', '.join(c.label for c in configs)}) x {len(args.seed_list)} "
          f"seed(s), {s['steps']} steps of {s['batch_size']} each, interleaved one step at a time; "
          "the expected duration is printed after the first round", file=sys.stderr)
    teacher_splits = splits
    if args.teacher_n_train:
        teacher_splits = data_mod.load_task(args.data, args.teacher_n_train, s["n_eval"], args.seed)
    teacher = prepare_teacher(args, teacher_splits, num_labels)
    student_layers = args.layer_list or ([0, 3] if args.quick else list(STUDENT_LAYERS))
    results = []
    for i, seed in enumerate(args.seed_list):
        print(f"seed {seed}: {', '.join(c.label for c in configs)}, {s['steps']} steps each, one step of each "
              "in turn", file=sys.stderr)
        results += run_seed(args, configs, base_cfg, seed, teacher, student_layers, len(args.seed_list) - i)

    summary = summarize(results)
    ratios = timing_ratios(results, comparisons(configs))
    chance = max(Counter(label for _, label in splits["eval"]).values()) / len(splits["eval"])
    table = build_table(summary) + "\n\nTime per step, paired within each round (the configurations take one " \
        "step each in turn):\n\n" + ratio_table(ratios)
    seeds = ", ".join(map(str, args.seed_list))
    elapsed = time.perf_counter() - wall
    notes = learning_notes(summary, chance, summary[0]["teacher_accuracy_before"]) + savings(summary, ratios) + [
        f"{s['steps']} steps per mode, batch {s['batch_size']}, student lr {base_cfg.student_lr:g}, seeds {seeds}"
        + (" (mean ± sample std over seeds)" if len(args.seed_list) > 1 else "")
        + f"; data {args.data} ({len(splits['train'])} train examples incl. a {base_cfg.quiz_fraction:.0%} quiz "
        f"split, {len(splits['eval'])} held out)",
        f"teacher: {'tiny random BERT (4 layers, width 64)' if args.quick else 'pretrained MiniLM-L6-H384'} fine-tuned on "
        f"{len(teacher_splits['train'])} training examples (seed {args.seed}), shared by every run"
        + (" (cached from an earlier run)" if teacher["cached"] else f" ({teacher['seconds']:.0f} s)")
        + f"; student: teacher blocks {student_layers}",
        f"torch threads per run: {results[0]['threads']}" if results else "",
        "time: every configuration runs in its own process; the processes take one step each in turn "
        "(round-robin, the first one rotating), so a background load falls on all of them alike, and the "
        "ratios are medians of per-round ratios",
        "peak memory: peak RSS of one process per run (includes loading the models)",
        (f"teacher_layers: {', '.join(args.layers_list)} (a value other than 'all': only those blocks learn, adapters "
         "or weights, embeddings and head in neither mode; the blocks below run once per meta-step without grad "
         "and are replayed)" if args.layers_list != ["all"] else ""),
        (f"meta_batch_size {args.meta_batch_size}: the meta-gradient of a pilot step on the first "
         f"{args.meta_batch_size} rows of each batch (pilot=restore, the real step on the whole batch)"
         if args.meta_batch_size else ""),
        "energy: " + (results[0]["train"]["energy_source"] if results else "n/a"),
        "per phase: wall and CPU seconds per step (a phase a step skips counts as 0), peak memory during the "
        f"phase ({results[0]['phase_memory_source'] if results else 'n/a'}; absolute, models included), energy "
        f"({results[0]['phase_energy_source'] if results else 'n/a'}); the meta-gradient phases are pilot, quiz, "
        "directional_derivative and teacher_backward, then teacher_step updates the teacher",
        f"whole run: {fmt_minutes(elapsed)} wall clock",
        args.data_note or "",
    ]
    if len(args.seed_list) > 1:
        table += "\n\nPer seed:\n\n" + per_seed_table(results)
    table += "\n\nPer phase (mean over the steps" + (" and seeds" if len(args.seed_list) > 1 else "") + "):\n\n"
    table += phase_table(summary)
    payload = {"benchmark": args.name, "quick": args.quick, "settings": s, "seeds": args.seed_list, "data": args.data,
               "n_train": len(splits["train"]), "n_eval": len(splits["eval"]), "threads": args.threads,
               "student_layers": student_layers, "config": base_cfg.to_dict(), "teacher": teacher,
               "configurations": [asdict(c) for c in configs], "chance_accuracy": chance,
               "wall_seconds": elapsed, "summary": summary, "time_ratios": ratios, "results": results,
               "measured": measured_flags(results), "sources": figure_sources(results)}
    notes = [n for n in notes if n]
    paths = write_results(args.out, args.name, payload, table, notes)
    png = Path(args.out) / f"{args.name}.png"
    plot(summary, ratios, png)
    print_report(payload, table, notes, [paths["json"], paths["md"], png])
    return 0


if __name__ == "__main__":
    sys.exit(main())
