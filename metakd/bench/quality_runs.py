"""The runs of the quality study (``metakd bench quality``): its base run, each run in a process of
its own, runs stored and read back (``--keep-runs``), the grid's choice, the controls' teachers."""

from __future__ import annotations

import argparse
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

from ..messages import hub_progress_bars
from . import sweep
from .report import run_worker

NAME = "quality"

GRID_SEED = 100  # the grid's default seed: outside the default compared seeds (0-4; quick 0, 1)

MODES = ("none", "lora", "full")

LABELS = {"none": "plain KD", "lora": "LoRA meta-KD", "full": "full meta-KD",
          "frozen": "plain KD, final {m} teacher frozen", "temperature": "plain KD, T matched to {m} entropy",
          "layers": "LoRA meta-KD, teacher_layers={m}"}

COLORS = {"none": "#888888", "lora": "#2a9d8f", "full": "#e76f51"}

CONTROLS = ("frozen", "temperature")
WORKER = "metakd.bench.quality"
"""The module whose ``--worker`` runs ``run_one`` (``quality.main``): ``run_all`` starts it, one process a run."""


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


# ---------------------------------------------------------------------------- stored runs (--keep-runs)
def stored_path(keep_runs: str | None, spec: dict[str, Any]) -> Path | None:
    """Where ``--keep-runs`` stores the result of ``spec`` (keyed by everything that defines the run)."""
    if not keep_runs:
        return None
    import hashlib

    from ..run import RunConfig

    key = {k: v for k, v in spec.items() if k not in ("progress", "label")}
    key["run"] = _minus_defaults(key["run"], RunConfig().to_dict())  # a setting added later keeps old keys valid
    return Path(keep_runs) / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}.json"


def _is_stored(keep_runs: str | None, spec: dict[str, Any]) -> bool:
    path = stored_path(keep_runs, spec)
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


# ---------------------------------------------------------------------------- the runs, a process each
def run_all(specs: list[dict[str, Any]], jobs: int, what: str, keep_runs: str | None = None) -> list[dict[str, Any]]:
    """Run every spec in a process of its own, ``jobs`` at a time, in order; prints progress. With
    ``keep_runs`` a run stored there is read back instead of repeated, and each new one is stored."""
    done = [0]
    start = time.perf_counter()

    def one(spec: dict[str, Any]) -> dict[str, Any]:
        stored = stored_path(keep_runs, spec)
        if _is_stored(keep_runs, spec):
            result = dict(json.loads(stored.read_text()), read_back=True)  # its wall time was spent earlier
        else:
            result = run_worker(WORKER, spec)
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
    progress = spec.get("progress", True)
    with tempfile.TemporaryDirectory(prefix="metakd-quality-") as tmp, hub_progress_bars(progress):
        run = RunConfig.from_dict(dict(spec["run"], output=tmp))
        result = distill(run, progress=progress)
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
        path = stored_path(keep_runs, spec)
        if _is_stored(keep_runs, spec) and not same_teacher(json.loads(path.read_text())["teacher_before"],
                                                            teacher_eval):
            stale.setdefault(spec["seed"], []).append(path)
        else:
            current.add(spec["seed"])
    return [p for seed, paths in stale.items() if seed in current for p in paths]


def refuse_stale(paths: list[Path]) -> None:
    if paths:
        raise sweep.ConfigError(
            f"{len(paths)} stored run(s) in --keep-runs were distilled from another teacher than the current one "
            "(the fine-tuned teacher was made again, e.g. on another machine) in seeds that also need runs from the "
            "current teacher: delete them to rerun those seeds: " + " ".join(map(str, paths)))


def refuse_lost_teachers(control_specs: Sequence[dict[str, Any]], keep_runs: str | None) -> None:
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
