"""Does an anchored teacher objective make learning to teach help? Plain KD vs the quiz-only LoRA
meta-update (guard off) vs the best anchored arm (a grid over the recipes and the teacher
objective's weights, chosen on validation), with the frozen-final-teacher control of that arm.

    metakd bench anchored [--quick] [--config RUN.yaml] [--set key=value] [--seeds 1,2,3,4,5]
                          [--grid-seed 0] [--jobs 2] [--threads 1] [--teacher-lr 1e-4] [--pilot-lr 1e-2]
                          [--lora-r 4] [--cells "recipe=mpl; teacher_anchor_weight=10"] [--no-control]
                          [--keep-runs DIR] [--name anchored]

1. Grid, on ``--grid-seed`` (never among the compared ``--seeds``): every cell of ``--cells`` (a
   recipe, expanded into its settings, and/or teacher-objective weights, quiz loss ...) on top of
   the LoRA meta-update with ``--teacher-lr``, ``--pilot-lr`` and ``--lora-r``, guard on. The cell
   with the best validation accuracy (at its best step; the validation split is carved from the
   training data) is the anchored arm. Every cell is reported: values, validation accuracy, the
   teacher's accuracy after, guard trips.
2. Main, per compared seed: plain KD, quiz-only (the same LoRA settings, quiz loss alone, guard off)
   and the anchored arm; 3. the control: plain KD from each seed's final anchored teacher, frozen, with the
   chosen cell's settings (the anchored arm's distillation loss: a recipe may set divergence and temperature).

Reported: paired differences against plain KD (95% t-intervals over the compared seeds, the
smallest difference detectable at 80% power), the teacher's accuracy before -> after, its
soft-label entropy, guard trips per arm, seconds per step, the wall time of every part.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from . import quality, sweep
from .report import markdown_table, print_report, serve_worker, write_results
from .stats import paired_difference

NAME = "anchored"
ARMS = {"none": "plain KD", "quiz_only": "quiz-only LoRA meta-KD (guard off)",
        "anchored": "anchored LoRA meta-KD (best cell)", "frozen": "plain KD, final anchored teacher frozen"}
DEFAULT_CELLS = ("recipe=mpl; recipe=lgtm; recipe=metadistil,quiz_batches=4; teacher_anchor_weight=1; "
                 "teacher_anchor_weight=10; teacher_ce_weight=1,teacher_anchor_weight=1; quiz_loss=margin; "
                 "quiz_loss=margin,teacher_anchor_weight=1")


def parse_cells(text: str) -> list[dict[str, Any]]:
    """``"k=v,k=v; k=v"`` -> one dict of distill settings per cell (numbers parsed; a recipe expanded into
    its settings, under the cell's own values)."""
    import yaml

    from ..recipes import recipe_settings

    cells = []
    for chunk in [c for c in text.split(";") if c.strip()]:
        values: dict[str, Any] = {}
        for pair in [p for p in chunk.split(",") if p.strip()]:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise sweep.ConfigError(f"--cells: {pair.strip()!r} is not key=value")
            values[key.strip()] = yaml.safe_load(value.strip())
        if "recipe" in values:
            try:
                values = {**recipe_settings(values["recipe"]), **values}
            except ValueError as exc:
                raise sweep.ConfigError(f"--cells: {exc}") from None
        cells.append(values)
    if not cells:
        raise sweep.ConfigError("--cells holds no cell")
    return cells


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metakd bench anchored", description=__doc__.split("\n\n")[0])
    sweep.add_arguments(p)
    p.set_defaults(seeds=None)
    p.add_argument("--grid-seed", type=int, default=0, help="the seed of the grid runs (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (default: %(default)s)")
    p.add_argument("--teacher-lr", type=float, default=1e-4, help="LoRA teacher lr of every meta arm")
    p.add_argument("--pilot-lr", type=float, default=1e-2, help="pilot lr of every meta arm (recipes may set 'student')")
    p.add_argument("--lora-r", type=int, default=4, help="teacher LoRA rank (lora_alpha = 2 x rank)")
    p.add_argument("--cells", default=None, help=f"grid cells, ';'-separated (default: {DEFAULT_CELLS})")
    p.add_argument("--no-control", action="store_true", help="skip the frozen-final-teacher control")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps (distill.eval_every)")
    p.add_argument("--keep-runs", help="store each run's result here and read it back when run again")
    p.add_argument("--name", default=NAME, help="result file name (default: %(default)s)")
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(list(argv))
    if args.worker:
        return args
    if args.seeds is None:
        args.seeds = "1,2" if args.quick else "1,2,3,4,5"
    sweep.parse_common(p, args)
    if args.grid_seed in args.seed_list:
        p.error(f"--grid-seed {args.grid_seed} is among --seeds {args.seeds}: the compared seeds must not include "
                "the seed the grid chose on")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    try:
        args.cell_list = parse_cells(args.cells or (("teacher_anchor_weight=1; recipe=mpl") if args.quick
                                                    else DEFAULT_CELLS))
    except (ValueError, sweep.ConfigError) as exc:
        p.error(str(exc))
    args.modes, args.no_progress = ["none", "lora"], args.no_progress
    return args


def meta_values(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The LoRA meta settings every meta arm shares, with ``extra`` on top."""
    return {"teacher_lr": args.teacher_lr, "pilot_lr": args.pilot_lr, "lora_r": args.lora_r,
            "lora_alpha": 2 * args.lora_r, **extra}


def _label(values: dict[str, Any]) -> str:
    recipe = values.get("recipe")
    skip = set()
    if recipe:
        from ..recipes import recipe_settings

        skip = {k for k, v in recipe_settings(recipe).items() if values.get(k) == v}
    shown = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
             if k not in skip and k not in ("teacher_lr", "pilot_lr", "lora_r", "lora_alpha")]
    return ", ".join(shown) or "(base)"


def _specs(args, run, tdir: str, kind: str, seeds: Sequence[int], values: dict[str, Any], mode: str,
           work: Path | None = None) -> list[dict[str, Any]]:
    out = []
    for seed in seeds:
        keep = str(work / f"{kind}-{seed}") if work is not None else None
        spec = quality._spec(args, run, tdir, ARMS.get(kind, kind), kind, mode, seed, values, keep=keep)
        out.append(spec)
    return out


# ---------------------------------------------------------------------------- summaries
def arm_summary(results: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Per arm: accuracy (last and best-validation step) mean ± std, paired Δ against plain KD, teacher
    before -> after, entropy, guard trips, s/step."""
    by = {(r["kind"], r["seed"]): r for r in results}
    out = []
    for arm in [a for a in ARMS if any(r["kind"] == a for r in results)]:
        runs = [by[(arm, s)] for s in seeds if (arm, s) in by]
        e: dict[str, Any] = {"arm": arm, "label": ARMS[arm], "seeds": [r["seed"] for r in runs]}
        for at in ("last", "best"):
            e[at] = sweep.mean_std([quality.score(r, at) for r in runs])
            paired = [s for s in e["seeds"] if ("none", s) in by]
            if arm != "none" and len(paired) == len(runs) and runs:
                e[f"delta_{at}"] = paired_difference([quality.score(by[("none", s)], at) for s in paired],
                                                     [quality.score(by[(arm, s)], at) for s in paired])
        for when in ("teacher_before", "teacher_after"):
            e[when] = sweep.mean_std([float(r[when]["accuracy"]) for r in runs])
        last = [r["eval_curve"][-1] for r in runs]
        if all("teacher_entropy" in p for p in last):
            e["teacher_entropy"] = sweep.mean_std([float(p["teacher_entropy"]) for p in last])
        e["guard_trips"] = [int((r.get("teacher_guard") or {}).get("trip_count", 0)) for r in runs]
        e["median_step_seconds"] = sweep.mean_std([float(r["median_step_seconds"]) for r in runs])
        out.append(e)
    return out


def main_table(summary: Sequence[dict[str, Any]]) -> str:
    cols = ["arm", "seeds", "accuracy, last step", "Δ vs plain KD (points, 95% CI)", "accuracy, best-val step",
            "Δ (points, 95% CI)", "teacher acc before → after", "teacher entropy (nats)", "guard trips (per seed)",
            "s/step (median)"]
    rows = []
    for e in summary:
        n = len(e["seeds"])
        rows.append([e["label"], n, sweep.pm(e["last"], ".4f", n), quality._delta(e.get("delta_last")),
                     sweep.pm(e["best"], ".4f", n), quality._delta(e.get("delta_best")),
                     f"{sweep.pm(e['teacher_before'], '.4f', n)} → {sweep.pm(e['teacher_after'], '.4f', n)}",
                     sweep.pm(e.get("teacher_entropy"), ".3f", n), ", ".join(map(str, e["guard_trips"])),
                     sweep.pm(e["median_step_seconds"], ".3f", n)])
    return markdown_table(cols, rows)


def grid_table(grid: Sequence[dict[str, Any]], chosen: dict[str, Any]) -> str:
    rows = []
    for r in grid:
        b, g = r["best_validation"], r.get("teacher_guard") or {}
        rows.append([r["values"].get("recipe", "—"), _label(r["values"]), f"{b['validation']['accuracy']:.4f}",
                     b["step"], f"{r['teacher_before']['accuracy']:.4f} → {r['teacher_after']['accuracy']:.4f}",
                     g.get("trip_count", 0), "yes" if g.get("stopped") else "", "✓" if r is chosen else ""])
    return markdown_table(["preset", "settings", "val acc (best step)", "best step", "teacher acc before → after",
                           "guard trips", "stopped", "chosen"], rows)


def per_seed_table(results: Sequence[dict[str, Any]]) -> str:
    rows = [[ARMS[r["kind"]], r["seed"], f"{quality.score(r, 'last'):.4f}", f"{quality.score(r, 'best'):.4f}",
             r["best_validation"]["step"], f"{r['teacher_before']['accuracy']:.4f}",
             f"{r['teacher_after']['accuracy']:.4f}", (r.get("teacher_guard") or {}).get("trip_count", 0),
             f"{r['wall_seconds']:.0f}"] for r in sorted(results, key=lambda r: (r["seed"], list(ARMS).index(r["kind"])))]
    return markdown_table(["arm", "seed", "acc last", "acc at best-val step", "best-val step", "teacher acc before",
                           "teacher acc after", "guard trips", "wall s"], rows)


def verdict(summary: Sequence[dict[str, Any]]) -> list[str]:
    return quality.verdict(summary)


# ---------------------------------------------------------------------------- the study
def study(args: argparse.Namespace) -> int:
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    run = quality.base_run(args)
    for cell in args.cell_list:  # a bad cell fails here, before any work
        sweep.with_overrides(run, {"distill.meta_update": "lora", **{f"distill.{k}": v
                                                                     for k, v in meta_values(args, **cell).items()}})
    splits = sweep.check_data(run)
    print(f"data: {run.data}: {len(splits['train'])} train, {len(splits['eval'])} eval examples", file=sys.stderr)
    teacher = sweep.prepare_teacher(run, fine_tune=not args.no_finetune, progress=not args.no_progress)
    timing["teacher (fine-tune or cache)"] = time.perf_counter() - t0
    work = Path(args.keep_runs) / "teachers" if args.keep_runs else Path(tempfile.mkdtemp(prefix="metakd-anchored-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _study(args, run, teacher, work, timing)
    finally:
        if not args.keep_runs:
            shutil.rmtree(work, ignore_errors=True)


def _study(args, run, teacher: dict[str, Any], work: Path, timing: dict[str, float]) -> int:
    tdir = teacher["teacher_dir"]
    t = time.perf_counter()
    grid_specs = [quality._spec(args, run, tdir, f"cell {i}: {_label(c)}", "grid", "lora", args.grid_seed,
                                meta_values(args, **c)) for i, c in enumerate(args.cell_list)]
    grid = quality.run_all(grid_specs, args.jobs, "grid", args.keep_runs)
    timing["grid"] = time.perf_counter() - t
    chosen = quality.choose(grid, "lora")
    t = time.perf_counter()
    seeds = args.seed_list
    specs = []
    for seed in seeds:  # interleaved: the arms of a seed run side by side
        specs += _specs(args, run, tdir, "none", [seed], {}, "none")
        specs += _specs(args, run, tdir, "quiz_only", [seed], meta_values(args, teacher_guard=False), "lora")
        specs += _specs(args, run, tdir, "anchored", [seed], chosen["values"], "lora",
                        None if args.no_control else work)
    main = quality.run_all(specs, args.jobs, "main", args.keep_runs)
    timing["main runs"] = time.perf_counter() - t
    t = time.perf_counter()
    controls = []
    if not args.no_control:
        # the chosen cell's settings in plain KD: the same distillation loss as the anchored arm (a recipe may set
        # divergence and temperature), only the meta-update is off
        control_specs = [quality._spec(args, run, r["kept_teacher"], ARMS["frozen"], "frozen", "none", r["seed"],
                                       chosen["values"]) for r in main if r["kind"] == "anchored"]
        controls = quality.run_all(control_specs, args.jobs, "controls", args.keep_runs)
    timing["controls"] = time.perf_counter() - t
    results = main + controls
    summary = arm_summary(results, seeds)
    timing["total"] = sum(timing.values())
    body = ("Per arm (accuracy on the evaluation split; Δ = arm − plain KD over the same seeds, in points, with a "
            "95% t-interval):\n\n" + main_table(summary) + "\n\nPer seed:\n\n" + per_seed_table(results)
            + f"\n\nGrid (seed {args.grid_seed}, not among the compared seeds; chosen by validation accuracy):\n\n"
            + grid_table(grid, chosen))
    d = run.distill
    notes = verdict(summary) + [
        f"compared seeds: {', '.join(map(str, seeds))}; the grid ran on seed {args.grid_seed} only",
        f"chosen cell: {_label(chosen['values'])} (validation accuracy "
        f"{chosen['best_validation']['validation']['accuracy']:.4f})",
        f"meta arms: LoRA r={args.lora_r}, teacher_lr {args.teacher_lr:g}, pilot_lr {args.pilot_lr:g} unless the cell "
        f"sets them; guard on (teacher_guard_points {d.teacher_guard_points:g}, trips {d.teacher_guard_trips}) except "
        "quiz-only",
        f"data {run.data}: n_train {run.n_train} (train / quiz {d.quiz_fraction:g} / validation "
        f"{d.validation_fraction:g}, carved by seed), evaluation on {'all' if run.n_eval is None else run.n_eval} "
        f"held-out examples; student {run.student}; teacher {run.teacher} fine-tuned once (cached), held-out accuracy "
        f"{(teacher.get('eval') or {}).get('accuracy', float('nan')):.4f}"
        + (f", on {teacher.get('n_train') or run.finetune['n_train'] or 'all the'} training examples outside the "
           "distillation's n_train pool (finetune.disjoint)" if run.finetune.get("disjoint") else "")
        + (f"; the pool is one seeded subset for every seed (data_seed {run.data_seed})"
           if run.data_seed is not None else ""),
        f"schedule: {d.epochs} epoch(s)" + (f" capped at {d.max_steps} steps" if d.max_steps else "")
        + f", batch {d.batch_size}, student_lr {d.student_lr:g} ({d.student_lr_schedule}), T={d.temperature:g}, "
        f"alpha={d.alpha:g}, meta_grad={d.meta_grad}, pilot={d.pilot}; evaluation every {d.eval_every} steps",
        "wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items())
        + f"; {args.jobs} run(s) at a time, torch threads per run: {args.threads or 'default'}",
    ]
    payload = {"benchmark": NAME, "quick": args.quick, "seeds": seeds, "grid_seed": args.grid_seed,
               "cells": args.cell_list, "chosen": chosen["values"], "base_run": run.to_dict(), "teacher": teacher,
               "grid": grid, "summary": summary, "results": results, "timing_seconds": timing,
               "jobs": args.jobs, "threads": args.threads}
    paths = write_results(args.out, args.name, payload, body, notes)
    print_report(payload, body, notes, [paths["json"], paths["md"]])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.worker:
        return serve_worker(args.worker, quality.run_one)
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return study(args)


if __name__ == "__main__":
    sys.exit(main())
