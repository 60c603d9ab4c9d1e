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
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from . import sweep
from .report import markdown_table, print_report, run_worker, serve_worker, write_results
from .stats import paired_difference

NAME = "quality"
GRID_SEED = 100  # the grid's default seed: outside the default compared seeds (0-4; quick 0, 1)
MODES = ("none", "lora", "full")
LABELS = {"none": "plain KD", "lora": "LoRA meta-KD", "full": "full meta-KD",
          "frozen": "plain KD, final {m} teacher frozen", "temperature": "plain KD, T matched to {m} entropy",
          "layers": "LoRA meta-KD, teacher_layers={m}"}
COLORS = {"none": "#888888", "lora": "#2a9d8f", "full": "#e76f51"}
CONTROLS = ("frozen", "temperature")


# ---------------------------------------------------------------------------- the base run
def default_run(quick: bool) -> dict[str, Any]:
    """The offline study: SST-2 low-resource (1,000 training sentences, carved into train / quiz 10%
    / validation 20%), the bundled MiniLM-L6 fine-tuned once on 4,000 sentences, student = its
    blocks 0 and 5; evaluation on the 872 dev sentences. ``quick``: a tiny random BERT teacher on
    a slice of the embedded task."""
    distill = dict(meta_update="none", meta_grad="jvp", pilot="reuse", temperature=2.0, alpha=0.5,
                   student_lr=1e-4, student_lr_schedule="linear", warmup_ratio=0.1, teacher_lr=1e-4, pilot_lr=1e-2,
                   quiz_fraction=0.1, validation_fraction=0.2, batch_size=16, max_length=64, epochs=3, eval_every=20,
                   eval_batch_size=128, track_teacher=256)
    if quick:
        return dict(task="classification", teacher="tiny", student="first:2", data="embedded", n_train=240, n_eval=80,
                    finetune=dict(epochs=6, lr=3e-3, batch_size=32),
                    distill=dict(distill, student_lr=3e-3, max_length=32, epochs=1, eval_every=5, track_teacher=40))
    sst2 = sweep.SHARED_DATA / "sst2"
    data = str(sst2) if sst2.is_dir() else "embedded"
    return dict(task="classification", teacher="embedded", student="layers:0,5", data=data, n_train=1000,
                n_eval=None if data != "embedded" else 500,
                finetune=dict(epochs=2, lr=5e-5, n_train=4000, batch_size=32), distill=distill)


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


def base_run(args: argparse.Namespace):
    """The RunConfig of the study (``--config`` or the default, with ``--set``, ``--steps``, ``--eval-every``)."""
    from ..run import RunConfig, apply_overrides

    if args.config:
        run = sweep.base_run(args)
        values = run.to_dict()
    else:
        values = apply_overrides(default_run(args.quick), list(args.overrides)
                                 + ([f"distill.max_steps={args.steps}"] if args.steps else []))
    if args.eval_every:
        values["distill"]["eval_every"] = args.eval_every
    run = RunConfig.from_dict(values)
    d = run.distill
    if run.task != "classification":
        raise sweep.ConfigError("bench quality compares classification accuracy; the run's task is "
                                f"{run.task!r}")
    if not d.validation_fraction:
        raise sweep.ConfigError("bench quality chooses hyper-parameters on a validation split: set "
                                "distill.validation_fraction > 0")
    if not d.eval_every:
        raise sweep.ConfigError("bench quality needs learning curves: set distill.eval_every (or --eval-every)")
    return run


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


def _stored(keep_runs: str | None, spec: dict[str, Any]) -> Path | None:
    """Where ``--keep-runs`` stores the result of ``spec`` (keyed by everything that defines the run)."""
    if not keep_runs:
        return None
    import hashlib

    from ..run import RunConfig

    key = {k: v for k, v in spec.items() if k not in ("progress", "label")}
    key["run"] = _minus_defaults(key["run"], RunConfig().to_dict())  # a setting added later keeps old keys valid
    return Path(keep_runs) / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}.json"


def _is_stored(keep_runs: str | None, spec: dict[str, Any]) -> bool:
    path = _stored(keep_runs, spec)
    return path is not None and path.is_file()


def _minus_defaults(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the entries equal to ``defaults``' (recursively into nested dicts)."""
    out = {}
    for k, v in values.items():
        d = defaults.get(k, object())
        if isinstance(v, dict) and isinstance(d, dict):
            v = _minus_defaults(v, d)
            if v:
                out[k] = v
        elif v != d:
            out[k] = v
    return out


def run_all(specs: list[dict[str, Any]], jobs: int, what: str, keep_runs: str | None = None) -> list[dict[str, Any]]:
    """Run every spec in a process of its own, ``jobs`` at a time, in order; prints progress. With
    ``keep_runs`` a run stored there is read back instead of repeated, and each new one is stored."""
    done = [0]
    start = time.perf_counter()

    def one(spec: dict[str, Any]) -> dict[str, Any]:
        stored = _stored(keep_runs, spec)
        if _is_stored(keep_runs, spec):
            result = dict(json.loads(stored.read_text()), read_back=True)  # its wall time was spent earlier
        else:
            result = run_worker(__name__, spec)
            if stored is not None:
                stored.parent.mkdir(parents=True, exist_ok=True)
                stored.write_text(json.dumps(result))
        done[0] += 1
        print(f"[{what} {done[0]}/{len(specs)}] {spec['label']}, seed {spec['seed']}: final accuracy "
              f"{result['student']['accuracy']:.4f} ({result['wall_seconds']:.0f} s; "
              f"{time.perf_counter() - start:.0f} s into {what})", file=sys.stderr, flush=True)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, specs))


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: distil one spec (``metakd.run.distill``); keep the final teacher when asked."""
    import torch

    from ..run import RunConfig, distill

    start = time.perf_counter()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix="metakd-quality-") as tmp:
        run = RunConfig.from_dict(dict(spec["run"], output=tmp))
        result = distill(run, progress=spec.get("progress", True))
        history = json.loads((Path(tmp) / "metrics.json").read_text())["history"]
        if spec.get("keep_teacher") and run.distill.meta_update != "none":
            export_teacher(run, Path(tmp) / "distilled", Path(spec["keep_teacher"]))
    seconds = [h["seconds"] for h in history["train"]]
    return {k: spec[k] for k in ("label", "kind", "mode", "seed", "values")} | {
        "student": result["student"], "best_validation": result["best_validation"],
        "teacher_before": result["teacher_before"], "teacher_after": result["teacher_after"],
        "temperature": run.distill.temperature, "steps": result["steps"], "train": result["train"],
        "median_step_seconds": statistics.median(seconds) if seconds else None,
        "eval_curve": history["eval"], "validation_curve": history.get("validation", []),
        "teacher_guard": history.get("teacher_guard"),
        "kept_teacher": spec.get("keep_teacher"), "wall_seconds": time.perf_counter() - start}


def meta_run(main: Sequence[dict[str, Any]], mode: str, seed: int) -> dict[str, Any]:
    """The main run of meta ``mode`` at ``seed`` (not a ``--lora-teacher-layers`` arm of that mode),
    whose final teacher the controls use."""
    return next(r for r in main if r["kind"] == "main" and r["mode"] == mode and r["seed"] == seed)


# a run's initial teacher, identified by its measured evaluation: the arms of one seed must share it
_FROM_INITIAL_TEACHER = ("grid", "main", "layers", "temperature")


def same_teacher(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two evaluations of a teacher on the evaluation split (``teacher_before``, the
    fine-tune's ``eval``) come from the same weights: same accuracy, loss within 1e-4."""
    return bool(a and b) and a["accuracy"] == b["accuracy"] and abs(a["loss"] - b["loss"]) < 1e-4


def teacher_groups(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct initial teachers of ``results`` (``{"eval", "seeds"}``, in order of first use);
    raises ConfigError when the arms of one seed were distilled from different teachers (a pairing
    by seed would compare teachers, not modes)."""
    groups: list[dict[str, Any]] = []
    by_seed: dict[int, dict[str, Any]] = {}
    for r in [r for r in results if r["kind"] in _FROM_INITIAL_TEACHER]:
        group = next((g for g in groups if same_teacher(g["eval"], r["teacher_before"])), None)
        if group is None:
            group = {"eval": r["teacher_before"], "seeds": []}
            groups.append(group)
        first = by_seed.setdefault(r["seed"], group)
        if first is not group:
            raise sweep.ConfigError(
                f"seed {r['seed']}: its runs were distilled from different teachers (held-out accuracy "
                f"{first['eval']['accuracy']:.4f} and {group['eval']['accuracy']:.4f}; the fine-tuned teacher was "
                "made again, e.g. on another machine): delete that seed's stored runs from --keep-runs to rerun it")
        if r["seed"] not in group["seeds"]:
            group["seeds"].append(r["seed"])
    return groups


def stale_stored_runs(specs: Sequence[dict[str, Any]], keep_runs: str | None, teacher_eval: dict[str, Any] | None,
                      done: Sequence[dict[str, Any]] = ()) -> list[Path]:
    """Stored runs of ``specs`` made from another teacher than the current one (``teacher_eval``, the
    fine-tune's evaluation) in a seed whose other runs (new, stored, or ``done`` already) use the current
    one: reading them back would pair two teachers. A seed stored whole from an earlier teacher is kept."""
    if not keep_runs or teacher_eval is None:
        return []
    stale: dict[int, list[Path]] = {}
    current = {r["seed"] for r in done if r["kind"] in _FROM_INITIAL_TEACHER
               and same_teacher(r["teacher_before"], teacher_eval)}
    for spec in specs:
        path = _stored(keep_runs, spec)
        if _is_stored(keep_runs, spec) and not same_teacher(json.loads(path.read_text())["teacher_before"],
                                                            teacher_eval):
            stale.setdefault(spec["seed"], []).append(path)
        else:
            current.add(spec["seed"])
    return [p for seed, paths in stale.items() if seed in current for p in paths]


def _refuse_stale(paths: list[Path]) -> None:
    if paths:
        raise sweep.ConfigError(
            f"{len(paths)} stored run(s) in --keep-runs were distilled from another teacher than the current one "
            "(the fine-tuned teacher was made again, e.g. on another machine) in seeds that also need runs from the "
            "current teacher: delete them to rerun those seeds: " + " ".join(map(str, paths)))


def _refuse_lost_teachers(control_specs: Sequence[dict[str, Any]], keep_runs: str | None) -> None:
    """A frozen control still to run needs its seed's final meta-updated teacher on disk."""
    lost = [f"seed {c['seed']}: {c['run']['teacher']}" for c in control_specs
            if c["kind"] == "frozen" and not _is_stored(keep_runs, c) and not Path(c["run"]["teacher"]).is_dir()]
    if lost:
        raise sweep.ConfigError("the frozen control needs the final meta-updated teacher, which is gone ("
                                + "; ".join(lost) + "): leave those seeds out of --control-seeds, or delete their "
                                "stored meta runs from --keep-runs to rerun them")


def export_teacher(run, distilled: Path, target: Path) -> None:
    """Save the final meta-updated teacher as a plain model directory (LoRA merged in)."""
    if run.distill.meta_update == "full":
        shutil.copytree(distilled / "teacher", target)
        return
    from peft import PeftModel

    from ..models import model_config
    from ..run import load_teacher

    base, tokenizer = load_teacher(run, model_config(run.teacher, "teacher").num_labels)
    merged = PeftModel.from_pretrained(base, str(distilled / "teacher_adapters")).merge_and_unload()
    merged.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))


def choose(grid: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    """The grid result of ``mode`` with the best validation accuracy at its best step; on a tie (common
    on a small validation split) the lower validation loss at that step, then the earlier in grid order."""
    runs = [r for r in grid if r["mode"] == mode]

    def rank(r: dict[str, Any]) -> tuple[float, float, int]:
        val = r["best_validation"]["validation"]
        return val["accuracy"], -val.get("loss", math.inf), -runs.index(r)

    return max(runs, key=rank)


def matched_temperature(run, teacher_dir: str, target_entropy: float, seed: int) -> float:
    """The temperature at which the initial teacher's soft labels on the tracked evaluation examples
    (of the run with ``seed``) have mean entropy ``target_entropy``."""
    from ..data import encode
    from ..run import load_data, load_teacher
    from ..teacher_stats import teacher_logits, temperature_for_entropy

    run = sweep.with_overrides(run, {"teacher": teacher_dir, "distill.seed": seed})
    splits = load_data(run)
    n = run.distill.track_teacher
    model, tokenizer = load_teacher(run, len(splits.get("label_names") or []) or None)
    data = encode(splits["eval"][:n], tokenizer, run.distill.max_length)
    pad = model.config.pad_token_id or 0
    logits, _ = teacher_logits(model, data, run.distill.eval_batch_size, pad, "cpu")
    return temperature_for_entropy(logits, target_entropy)


# ---------------------------------------------------------------------------- summaries
def score(result: dict[str, Any], at: str) -> float:
    """The student's evaluation accuracy at the last step (``at="last"``) or the best-validation step."""
    if at == "last":
        return float(result["student"]["accuracy"])
    return float(result["best_validation"]["eval"]["accuracy"])


def arm_key(r: dict[str, Any]) -> str:
    return r["mode"] if r["kind"] == "main" else f"{r['kind']}:{r['values']['of']}"


def arm_label(key: str) -> str:
    if ":" in key:
        kind, of = key.split(":", 1)
        return LABELS[kind].format(m=of if kind == "layers" else LABELS[of].split()[0])
    return LABELS[key]


def summarize(results: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Per arm (mode or control): mean ± std of the final and best-validation accuracy, the teacher
    before -> after, the paired difference with plain KD (same seeds), time per step."""
    arms = list(dict.fromkeys(arm_key(r) for r in results))
    by = {(arm_key(r), r["seed"]): r for r in results}
    out = []
    for arm in arms:
        runs = [by[(arm, s)] for s in seeds if (arm, s) in by]
        entry: dict[str, Any] = {"arm": arm, "label": arm_label(arm), "seeds": [r["seed"] for r in runs]}
        for at in ("last", "best"):
            entry[at] = sweep.mean_std([score(r, at) for r in runs])
            paired = [s for s in entry["seeds"] if ("none", s) in by]
            if arm != "none" and len(paired) == len(runs):
                entry[f"delta_{at}"] = paired_difference([score(by[("none", s)], at) for s in paired],
                                                         [score(by[(arm, s)], at) for s in paired])
            with_lora = [s for s in entry["seeds"] if ("lora", s) in by]
            if arm.startswith("layers:") and len(with_lora) == len(runs):  # against LoRA on every block
                entry[f"delta_lora_{at}"] = paired_difference([score(by[("lora", s)], at) for s in with_lora],
                                                              [score(by[(arm, s)], at) for s in with_lora])
        entry["best_step"] = sweep.mean_std([float(r["best_validation"]["step"]) for r in runs])
        entry["steps"] = runs[0]["steps"]
        for when in ("teacher_before", "teacher_after"):
            entry[when] = sweep.mean_std([float(r[when]["accuracy"]) for r in runs])
        last = [r["eval_curve"][-1] for r in runs]
        for key in ("teacher_entropy", "teacher_kl_from_initial"):
            if all(key in p for p in last):
                entry[key] = sweep.mean_std([float(p[key]) for p in last])
        entry["median_step_seconds"] = sweep.mean_std([float(r["median_step_seconds"]) for r in runs])
        entry["temperature"] = sweep.mean_std([float(r["temperature"]) for r in runs])
        out.append(entry)
    return out


def _pm(stat: dict[str, float] | None, fmt: str = ".4f", n: int = 2) -> str:
    return sweep.pm(stat, fmt, n)


def _delta(d: dict[str, Any] | None) -> str:
    if not d:
        return "—"
    if d["ci_low"] is None:
        return f"{100 * d['mean']:+.2f} (one seed)"
    return f"{100 * d['mean']:+.2f} [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]"


def main_table(summary: Sequence[dict[str, Any]]) -> str:
    cols = ["arm", "seeds", "accuracy, last step", "Δ vs plain KD (points, 95% CI)", "accuracy, best-val step",
            "Δ (points, 95% CI)", "best-val step", "teacher acc before → after", "teacher entropy (nats)",
            "KL(initial‖final) teacher", "T", "s/step (median)"]
    rows = []
    for e in summary:
        n = len(e["seeds"])
        rows.append([e["label"], n, _pm(e["last"], n=n), _delta(e.get("delta_last")), _pm(e["best"], n=n),
                     _delta(e.get("delta_best")), _pm(e["best_step"], ".0f", n),
                     f"{_pm(e['teacher_before'], n=n)} → {_pm(e['teacher_after'], n=n)}",
                     _pm(e.get("teacher_entropy"), ".3f", n), _pm(e.get("teacher_kl_from_initial"), ".4f", n),
                     _pm(e["temperature"], ".2f", n), _pm(e["median_step_seconds"], ".3f", n)])
    return markdown_table(cols, rows)


def per_seed_table(results: Sequence[dict[str, Any]]) -> str:
    rows = [[arm_label(arm_key(r)), r["seed"], f"{score(r, 'last'):.4f}", f"{score(r, 'best'):.4f}",
             r["best_validation"]["step"], f"{r['best_validation']['validation']['accuracy']:.4f}",
             f"{r['teacher_before']['accuracy']:.4f}", f"{r['teacher_after']['accuracy']:.4f}", r["steps"],
             f"{r['wall_seconds']:.0f}"]
            for r in sorted(results, key=lambda r: (r["seed"], arm_key(r)))]
    return markdown_table(["arm", "seed", "acc last", "acc at best-val step", "best-val step", "val acc (best)",
                           "teacher acc before", "teacher acc after", "steps", "wall s"], rows)


def grid_table(grid: Sequence[dict[str, Any]], chosen: dict[str, dict[str, Any]]) -> str:
    rows = []
    for r in grid:
        b = r["best_validation"]
        mark = "✓" if chosen.get(r["mode"]) is r else ""
        rows.append([LABELS[r["mode"]], ", ".join(f"{k}={v:g}" for k, v in r["values"].items() if k != "lora_alpha"),
                     f"{b['validation']['accuracy']:.4f}", b["step"], f"{r['teacher_after']['accuracy']:.4f}", mark])
    return markdown_table(["mode", "setting", "val acc (best step)", "best step", "teacher acc after", "chosen"], rows)


def curve_stats(results: Sequence[dict[str, Any]], curve: str, key: str) -> list[dict[str, float]]:
    """Mean ± std across seeds of ``key`` at the steps every run's ``curve`` shares."""
    series = [{int(p["step"]): float(p[key]) for p in r[curve] if key in p} for r in results]
    if not series or not all(series):
        return []
    steps = sorted(set.intersection(*(set(s) for s in series)))
    return [{"step": s, **sweep.mean_std([c[s] for c in series])} for s in steps]


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("eval_curve", "accuracy", "evaluation accuracy (student)"),
              ("validation_curve", "accuracy", "validation accuracy (student)"),
              ("eval_curve", "teacher_entropy", "teacher soft-label entropy (nats)"),
              ("eval_curve", "teacher_kl_from_initial", "KL(initial teacher ‖ teacher)")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    arms = list(dict.fromkeys(arm_key(r) for r in results))
    for ax, (curve, key, title) in zip(axes, panels):
        for i, arm in enumerate(arms):
            stats = curve_stats([r for r in results if arm_key(r) == arm], curve, key)
            if not stats:
                continue
            mode = arm.split(":")[-1]
            color = COLORS.get(mode, "#333333") if ":" not in arm else ["#264653", "#8d99ae"][i % 2]
            style = "--" if arm == "none" else (":" if ":" in arm else "-")
            xs = [s["step"] for s in stats]
            mean = [s["mean"] for s in stats]
            std = [s["std"] for s in stats]
            ax.plot(xs, mean, color=color, ls=style, marker="o", ms=2, label=arm_label(arm))
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=color,
                            alpha=0.15, linewidth=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=7)
    fig.suptitle("mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(summary: Sequence[dict[str, Any]]) -> list[str]:
    """One note per arm, from the paired intervals: a difference, or none detectable (and how small
    a difference could have been detected)."""
    notes = []
    for e in summary:
        d = e.get("delta_best")
        if not d or d["ci_low"] is None:
            continue
        if d["ci_low"] > 0 or d["ci_high"] < 0:
            word = "better" if d["mean"] > 0 else "worse"
            notes.append(f"{e['label']}: {word} than plain KD by {100 * d['mean']:+.2f} points at the best-validation "
                         f"step (95% CI {100 * d['ci_low']:+.2f} to {100 * d['ci_high']:+.2f}, {d['n']} seeds)")
        else:
            smallest = f"{100 * d['detectable']:.2f}" if d["detectable"] is not None else "n/a"
            notes.append(f"{e['label']}: no detectable difference from plain KD at the best-validation step "
                         f"({100 * d['mean']:+.2f} points, 95% CI {100 * d['ci_low']:+.2f} to {100 * d['ci_high']:+.2f}, "
                         f"{d['n']} seeds; the smallest difference this design detects at 80% power: {smallest} points)")
        d = e.get("delta_lora_best")
        if d and d["ci_low"] is not None:
            smallest = f"{100 * d['detectable']:.2f}" if d["detectable"] is not None else "n/a"
            notes.append(f"{e['label']} against LoRA meta-KD on every block (paired by seed): "
                         f"{100 * d['mean']:+.2f} points at the best-validation step (95% CI {100 * d['ci_low']:+.2f} "
                         f"to {100 * d['ci_high']:+.2f}, {d['n']} seeds; detectable at 80% power: {smallest} points)")
    return notes


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
    _refuse_stale(stale_stored_runs(grid_specs, args.keep_runs, teacher_eval))
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
    _refuse_stale(stale_stored_runs(specs, args.keep_runs, teacher_eval))
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
    _refuse_lost_teachers(control_specs, args.keep_runs)
    controls = run_all(control_specs, args.jobs, "controls", args.keep_runs) if control_specs else []
    timing["controls"] = time.perf_counter() - t

    results = main + controls
    teachers = teacher_groups(results)
    summary = summarize(results, args.seed_list)
    body = (f"Per arm (seeds {', '.join(map(str, args.seed_list))}; accuracy on the evaluation split; Δ = arm − "
            "plain KD over the same seeds, in points, with a 95% t-interval):\n\n" + main_table(summary)
            + "\n\nPer seed:\n\n" + per_seed_table(results))
    if grid:
        body += (f"\n\nGrid (seed {args.grid_seed}, not a compared seed; chosen by validation accuracy; these runs "
                 "only choose and are not among the compared runs above):\n\n" + grid_table(grid, chosen))
    timing["total"] = sum(timing.values())
    ran = [*grid, *main, *controls]
    earlier = [r for r in ran if r.get("read_back")]
    d = run.distill
    notes = verdict(summary) + [
        f"seeds compared: {', '.join(map(str, args.seed_list))}; "
        + (f"the grid ran on seed {args.grid_seed}, not among them: its runs chose the meta hyper-parameters and are "
           "not compared (every compared run, meta or plain, ran once with the chosen values)" if grid
           else "no grid ran (one value of each meta hyper-parameter given)"),
        f"data {run.data}: n_train {run.n_train} (train / quiz {d.quiz_fraction:g} / validation "
        f"{d.validation_fraction:g}, carved by seed; validation unique by text, disjoint from quiz and evaluation "
        f"data), evaluation on {'all' if run.n_eval is None else run.n_eval} held-out examples; student {run.student}; "
        f"teacher {run.teacher} fine-tuned once (cached), held-out accuracy "
        f"{(teacher.get('eval') or {}).get('accuracy', float('nan')):.4f}",
        *([f"the initial teacher differs between seeds ({len(teachers)} fine-tunes: stored runs from an earlier one "
           "were read back): held-out accuracy " + "; ".join(
               f"{g['eval']['accuracy']:.4f} for seed(s) {', '.join(map(str, g['seeds']))}" for g in teachers)
           + ". Every seed's arms share one teacher, so a paired difference compares modes; the spread over seeds "
           "includes the teacher's"] if len(teachers) > 1 else []),
        f"schedule: {d.epochs} epoch(s)" + (f" capped at {d.max_steps} steps" if d.max_steps else "")
        + f", batch {d.batch_size}, student_lr {d.student_lr:g} ({d.student_lr_schedule}, warm-up "
        f"{d.warmup_ratio if d.warmup_ratio is not None else d.warmup_steps}), T={d.temperature:g}, alpha={d.alpha:g}, "
        f"meta_grad={d.meta_grad}, pilot={d.pilot}, meta_every={d.meta_every}; evaluation every {d.eval_every} steps; "
        f"teacher tracked on {d.track_teacher} evaluation examples",
        "chosen meta hyper-parameters: " + "; ".join(
            f"{LABELS[m]}: " + ", ".join(f"{k}={v:g}" for k, v in vals.items())
            + (" (given, one value each: no grid run)" if m in single else "") for m, vals in chosen_values.items()),
        "controls: " + (", ".join(arm_label(f"{c}:{m}") for c in args.controls for m in args.control_modes)
                        + f" (seeds {', '.join(map(str, args.control_seeds_list))})" if args.controls else "none run"),
        "wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items())
        + f"; {args.jobs} run(s) at a time, torch threads per run: {args.threads or 'default'}"
        + (f"; {len(earlier)} of {len(ran)} runs read back from --keep-runs (their own wall times, "
           f"one process each, sum to {sum(r['wall_seconds'] for r in earlier) / 60:.1f} min)" if earlier else ""),
    ]
    payload = {"benchmark": NAME, "quick": args.quick, "seeds": args.seed_list, "compared_seeds": args.seed_list,
               "grid_seed": args.grid_seed if grid else None,
               "control_seeds": args.control_seeds_list if args.controls else [],
               "teachers": [{"accuracy": g["eval"]["accuracy"], "loss": g["eval"]["loss"], "seeds": g["seeds"]}
                            for g in teachers],
               "jobs": args.jobs, "threads": args.threads, "base_run": run.to_dict(), "teacher": teacher,
               "grid": grid, "chosen": chosen_values, "summary": summary, "results": results, "timing_seconds": timing,
               "curves": {arm: {c: {k: curve_stats([r for r in results if arm_key(r) == arm], c, k)
                                    for k in ("accuracy", "teacher_entropy", "teacher_kl_from_initial")}
                                for c in ("eval_curve", "validation_curve")}
                          for arm in dict.fromkeys(arm_key(r) for r in results)}}
    paths = write_results(args.out, args.name, payload, body, notes)
    png = Path(args.out) / f"{args.name}.png"
    plot(results, png)
    print_report(payload, body, notes, [paths["json"], paths["md"], png])
    return 0


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
