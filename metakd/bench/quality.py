"""Does learning to teach make a better student? Plain KD vs LoRA meta-KD vs full meta-KD over
seeds, run to the validation plateau, with the meta-update's hyper-parameters chosen on a
validation split and the controls that explain the answer.

    metakd bench quality [--quick] [--seeds 0,1,2,3,4] [--jobs 2] [--threads 1] [--modes none,lora,full]
                         [--lora-teacher-lrs ...] [--full-teacher-lrs ...] [--pilot-lrs ...] [--lora-ranks ...]
                         [--lora-pilot-lrs ...] [--full-pilot-lrs ...]
                         [--grid-seed 100] [--controls frozen,temperature] [--control-modes full] [--control-seeds ...]
                         [--lora-teacher-layers all,top:2] [--name quality]
                         [--config RUN.yaml] [--set key=value] [--steps N] [--eval-every N]

1. Grid (one seed, ``--grid-seed``, never among ``--seeds``): every meta mode with each combination
   of its teacher_lr (``--lora-teacher-lrs``/``--full-teacher-lrs``), ``--pilot-lrs`` (or, per mode,
   ``--lora-pilot-lrs``/``--full-pilot-lrs``) and, for LoRA, ``--lora-ranks``; the combination with
   the best validation accuracy (``history["best"]``, the validation split carved from the training
   data: never the evaluation data) is used for every seed. A mode given one value of each runs no
   grid: those values are used as given (e.g. the choice of an earlier grid), and the report says so.
   The grid runs only choose: none of them is compared (a best-of-grid meta run paired with a single
   plain-KD run would favour meta), so the grid seed must not be a compared seed.
2. Main: every mode x seed of ``--seeds``, each run afresh with the chosen values. Same seed = same
   student init, same batches, same quiz and validation split. Every run scores the student on the
   evaluation and validation data every ``eval_every`` steps and the teacher (``track_teacher``:
   accuracy, soft-label entropy, KL(initial || current)).
   ``--lora-teacher-layers all,top:2`` adds, per seed, a LoRA arm whose adapters go only into the
   named teacher blocks (``teacher_layers``), with the LoRA values the grid chose; it is compared
   with plain KD and, paired by seed, with LoRA on every block.
3. Controls, per seed (``--control-seeds``, default every seed), for each of ``--control-modes``: ``frozen``: plain KD from the *final*
   meta-updated teacher of that seed, frozen; ``temperature``: plain KD from the initial teacher
   at the temperature whose soft labels have the final meta-updated teacher's mean entropy (on
   the tracked evaluation examples; no labels used).

Reported: the final and the best-validation-step student accuracy per run and as mean ± std,
paired differences against plain KD with 95% t-intervals over seeds and the smallest difference
detectable at 80% power, the teacher before -> after, the grid, the curves (PNG with seed bands),
and the wall time of every part. Each run is a process of its own (``--jobs`` at a time); the
teacher is fine-tuned once and cached (``metakd.bench.sweep.prepare_teacher``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from . import sweep
from .quality_report import (arm_key, arm_label, curve_stats, grid_table, main_table, per_seed_table, plot, score,
                             summarize, verdict, write_report)
from .quality_report import delta_text as _delta
from .quality_runs import (COLORS, CONTROLS, GRID_SEED, LABELS, MODES, NAME, WORKER, base_run, choose, default_run,
                           export_teacher, matched_temperature, meta_run, refuse_lost_teachers, refuse_stale, run_all,
                           run_one, same_teacher, stale_stored_runs, stored_path, teacher_groups)
from .quality_runs import refuse_lost_teachers as _refuse_lost_teachers
from .quality_runs import stored_path as _stored
from .report import serve_worker

# the study's parts live in quality_runs (runs, stored runs, choices) and quality_report (summaries, tables, files);
# they are named here too, and so are the older private names that bench.anchored and the tests use
__all__ = [
    "COLORS", "CONTROLS", "GRID_SEED", "LABELS", "MODES", "NAME", "WORKER", "_delta", "_refuse_lost_teachers", "_spec",
    "_stored", "arm_key", "arm_label", "base_run", "choose", "curve_stats", "default_run", "export_teacher",
    "grid_table", "grid_variants", "main", "main_table", "matched_temperature", "meta_run", "parse", "parser",
    "per_seed_table", "plot", "refuse_lost_teachers", "refuse_stale", "run_all", "run_one", "same_teacher", "score",
    "stale_stored_runs", "stored_path", "study", "summarize", "teacher_groups", "verdict", "write_report",
]


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated numbers; got {text!r}") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"takes comma-separated positive numbers; got {text!r}")
    return values


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated integers; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"takes comma-separated positive integers; got {text!r}")
    return values


def _choices(allowed: Sequence[str], empty_ok: bool = False):
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if text.strip() == "none" and empty_ok:
            return []
        bad = [x for x in items if x not in allowed]
        if (not items and not empty_ok) or bad or len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"takes distinct values from {','.join(allowed)}; got {text!r}")
        return [x for x in allowed if x in items]
    return parse


def _layers(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()] if "[" not in text else [text.strip()]
    if not items or len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"takes distinct teacher_layers values, e.g. all,top:2; got {text!r}")
    return items


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metakd bench quality", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sweep.add_arguments(p)
    p.set_defaults(seeds=None)
    p.add_argument("--modes", type=_choices(MODES), default=list(MODES), help="subset of none,lora,full")
    p.add_argument("--lora-teacher-lrs", type=_floats, help="LoRA teacher_lr grid (default 1e-4,1e-3; quick 1e-3)")
    p.add_argument("--full-teacher-lrs", type=_floats, help="full teacher_lr grid (default 1e-5,1e-4; quick 1e-4,1e-3)")
    p.add_argument("--pilot-lrs", type=_floats, help="pilot_lr grid, both modes (default 1e-2,1e-1; quick 1e-2)")
    p.add_argument("--lora-pilot-lrs", type=_floats, help="pilot_lr grid of LoRA meta-KD (default: --pilot-lrs)")
    p.add_argument("--full-pilot-lrs", type=_floats, help="pilot_lr grid of full meta-KD (default: --pilot-lrs)")
    p.add_argument("--lora-ranks", type=_ints, help="LoRA rank grid (lora_alpha = 2 x rank; default 4,16; quick 4)")
    p.add_argument("--grid-seed", type=int, default=GRID_SEED,
                   help="the seed of the grid runs, not one of --seeds: the grid runs choose the meta "
                        "hyper-parameters and are not compared (default: %(default)s)")
    p.add_argument("--controls", type=_choices(CONTROLS, empty_ok=True), default=list(CONTROLS),
                   help="controls to run: frozen,temperature or none (default: both)")
    p.add_argument("--control-modes", type=_choices(("lora", "full")), default=["full"],
                   help="meta modes whose final teachers the controls use (default: full)")
    p.add_argument("--control-seeds", help="seeds of the controls, a subset of --seeds (default: every seed); "
                                           "controls paired over fewer seeds cost less and say less")
    p.add_argument("--lora-teacher-layers", type=_layers, default=["all"],
                   help="teacher_layers of the LoRA arms, e.g. all,top:2 (default: all); values other than all add "
                        "an arm each, with the LoRA values the grid chose")
    p.add_argument("--name", default=NAME, help="stem of the result files (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each a process (default: %(default)s)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default: the base run's)")
    p.add_argument("--keep-runs", metavar="DIR",
                   help="store every finished run (and the final teachers the controls use) in DIR and take runs "
                        "found there instead of repeating them: a stopped study continues where it stopped")
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(list(argv))
    if args.worker:
        return args
    if args.seeds is None:
        args.seeds = "0,1" if args.quick else "0,1,2,3,4"
    sweep.parse_common(p, args)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.eval_every is not None and args.eval_every < 1:
        p.error("--eval-every must be >= 1")
    grid = {"lora_teacher_lrs": ([1e-3] if args.quick else [1e-4, 1e-3]),
            "full_teacher_lrs": ([1e-4, 1e-3] if args.quick else [1e-5, 1e-4]),
            "pilot_lrs": ([1e-2] if args.quick else [1e-2, 1e-1]), "lora_ranks": ([4] if args.quick else [4, 16])}
    for key, value in grid.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.grid_seed in args.seed_list and _runs_grid(args):
        p.error(f"--grid-seed {args.grid_seed} is among --seeds {args.seeds}: the grid's runs choose the meta "
                "hyper-parameters, so its seed must not be a compared one (a best-of-grid meta run paired with one "
                "plain-KD run favours meta); give a --grid-seed outside --seeds")
    args.control_seeds_list = (list(args.seed_list) if args.control_seeds is None
                               else sweep.parse_seeds(p, "--control-seeds", args.control_seeds))
    if not set(args.control_seeds_list) <= set(args.seed_list):
        p.error(f"--control-seeds must be among --seeds {args.seeds}; got {args.control_seeds!r}")
    if args.controls and not set(args.control_modes) <= set(args.modes):
        p.error(f"--control-modes {','.join(args.control_modes)} must be among --modes {','.join(args.modes)}")
    if args.lora_teacher_layers != ["all"] and "lora" not in args.modes:
        p.error("--lora-teacher-layers adds LoRA arms: --modes must include lora")
    if args.controls and "none" not in args.modes:
        p.error("the controls are compared with plain KD: --modes must include none")
    return args


# ---------------------------------------------------------------------------- the runs
def _runs_grid(args: argparse.Namespace) -> bool:
    """Whether a meta mode has more than one combination to try (else no grid runs)."""
    counts: dict[str, int] = {}
    for v in grid_variants(args):
        counts[v["mode"]] = counts.get(v["mode"], 0) + 1
    return any(c > 1 for c in counts.values())


def grid_variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per meta mode x grid combination: ``{"mode", "values"}`` (the distill settings)."""
    out = []
    for mode in [m for m in args.modes if m != "none"]:
        lrs = args.lora_teacher_lrs if mode == "lora" else args.full_teacher_lrs
        ranks = args.lora_ranks if mode == "lora" else [None]
        pilots = getattr(args, f"{mode}_pilot_lrs", None) or args.pilot_lrs
        for lr, pilot, rank in itertools.product(lrs, pilots, ranks):
            values = {"teacher_lr": lr, "pilot_lr": pilot}
            if rank is not None:
                values["lora_r"], values["lora_alpha"] = rank, 2 * rank
            out.append({"mode": mode, "values": values})
    return out


def _spec(args, run, teacher_dir: str, label: str, kind: str, mode: str, seed: int, values: dict[str, Any],
          keep: str | None = None) -> dict[str, Any]:
    """A worker spec: the base run with this teacher, seed, mode and distill ``values``."""
    overrides = {"teacher": teacher_dir, "distill.seed": seed, "distill.meta_update": mode,
                 **{f"distill.{k}": v for k, v in values.items()}}
    cfg = sweep.with_overrides(run, overrides)
    return {"label": label, "kind": kind, "mode": mode, "seed": seed, "values": values, "threads": args.threads,
            "progress": not args.no_progress, "run": cfg.to_dict(), "keep_teacher": keep}


# ---------------------------------------------------------------------------- main
def study(args: argparse.Namespace) -> int:
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    run = base_run(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for v in grid_variants(args):  # a bad grid value fails here, before any work
        sweep.with_overrides(run, {f"distill.{k}": x for k, x in v["values"].items()})
    for layers in args.lora_teacher_layers:  # a malformed teacher_layers value fails here too (block counts: at the run)
        sweep.with_overrides(run, {"distill.meta_update": "lora", "distill.teacher_layers": layers})
    splits = sweep.check_data(run)
    print(f"data: {run.data}: {len(splits['train'])} train, {len(splits['eval'])} eval examples", file=sys.stderr)
    teacher = sweep.prepare_teacher(run, fine_tune=not args.no_finetune, progress=not args.no_progress)
    timing["teacher (fine-tune or cache)"] = time.perf_counter() - t0
    if args.keep_runs:
        work = Path(args.keep_runs) / "teachers"
        work.mkdir(parents=True, exist_ok=True)
        return _study(args, run, teacher, work, timing)
    work = Path(tempfile.mkdtemp(prefix="metakd-quality-teachers-"))
    try:
        return _study(args, run, teacher, work, timing)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _study(args, run, teacher, work: Path, timing: dict[str, float]) -> int:
    tdir, teacher_eval = teacher["teacher_dir"], teacher.get("eval")
    keep_modes = set(args.control_modes) if args.controls else set()

    def keep(mode: str, seed: int, tag: str) -> str | None:
        return str(work / f"{mode}-{seed}-{tag}") if mode in keep_modes else None

    # 1. the grid, on a seed of its own (not compared: its runs only choose)
    t = time.perf_counter()
    variants = grid_variants(args)
    single = {m for m in ("lora", "full") if sum(v["mode"] == m for v in variants) == 1}
    grid_specs = [_spec(args, run, tdir, f"grid {LABELS[v['mode']]}", "grid", v["mode"], args.grid_seed, v["values"])
                  for v in variants if v["mode"] not in single]
    refuse_stale(stale_stored_runs(grid_specs, args.keep_runs, teacher_eval))
    grid = run_all(grid_specs, args.jobs, "grid", args.keep_runs) if grid_specs else []
    timing["grid"] = time.perf_counter() - t
    chosen_values = {v["mode"]: v["values"] for v in variants if v["mode"] in single}
    chosen = {m: choose(grid, m) for m in ("lora", "full") if any(r["mode"] == m for r in grid)}
    chosen_values.update({m: r["values"] for m, r in chosen.items()})

    # 2. every mode x seed, each run afresh (the grid seed is not among them)
    t = time.perf_counter()
    specs = []
    for seed in args.seed_list:  # interleaved: the modes of a seed run side by side
        for mode in args.modes:
            specs.append(_spec(args, run, tdir, LABELS[mode], "main", mode, seed, chosen_values.get(mode, {}),
                               keep=keep(mode, seed, "main")))
    for seed in args.seed_list:  # LoRA in fewer teacher blocks, with the LoRA values the grid chose
        for layers in [x for x in args.lora_teacher_layers if x != "all"]:
            spec = _spec(args, run, tdir, arm_label(f"layers:{layers}"), "layers", "lora", seed,
                         dict(chosen_values.get("lora", {}), teacher_layers=layers))
            spec["values"] = dict(spec["values"], of=layers)
            specs.append(spec)
    refuse_stale(stale_stored_runs(specs, args.keep_runs, teacher_eval))
    main = run_all(specs, args.jobs, "main", args.keep_runs)
    timing["main runs"] = time.perf_counter() - t

    # 3. controls
    t = time.perf_counter()
    control_specs = []
    for seed in args.control_seeds_list:
        for mode in args.control_modes if args.controls else []:
            meta = meta_run(main, mode, seed)
            if "frozen" in args.controls:
                control_specs.append(_spec(args, run, meta["kept_teacher"], arm_label(f"frozen:{mode}"), "frozen",
                                           "none", seed, {}))
            if "temperature" in args.controls:
                if teacher_eval is not None and not same_teacher(meta["teacher_before"], teacher_eval):
                    raise sweep.ConfigError(f"seed {seed}: its stored runs come from another teacher than the current "
                                            "one, which the temperature control would use: leave the seed out of "
                                            "--control-seeds or delete its stored runs from --keep-runs")
                target = float(meta["eval_curve"][-1]["teacher_entropy"])
                temp = matched_temperature(run, tdir, target, seed)
                control_specs.append(_spec(args, run, tdir, arm_label(f"temperature:{mode}"), "temperature", "none",
                                           seed, {"temperature": temp}))
            for spec in control_specs[-len(args.controls):]:
                spec["values"] = dict(spec["values"], of=mode)  # which meta mode's teacher the control matches
    refuse_lost_teachers(control_specs, args.keep_runs)
    controls = run_all(control_specs, args.jobs, "controls", args.keep_runs) if control_specs else []
    timing["controls"] = time.perf_counter() - t

    results = main + controls
    return write_report(args, run, teacher, timing, grid, chosen, chosen_values, single, results)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.worker:
        return serve_worker(args.worker, run_one)
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return study(args)


if __name__ == "__main__":
    sys.exit(main())
