"""The harness of the sweep benchmarks (temperature, feature-layers, student-lora-vs-full,
kd-vs-meta): one base run (a run file, see ``metakd.run``), variants that change parts of it,
and every variant x seed distilled by ``metakd.run.distill`` in a process of its own. The
teacher is fine-tuned on the task once and cached, so every variant distils the same teacher.

Without ``--config`` the base run is offline: the pretrained MiniLM-L6 teacher bundled with
metakd on ``../shared/data/sst2`` (the embedded task when that is absent); ``--quick`` uses a
tiny random BERT teacher and a slice of the embedded task. ``--config RUN.yaml`` and ``--set
key=value`` run the same sweep on any recipe, e.g. a causal LM on a GPU
(``configs/openwebtext_lm.yaml``): quality is then perplexity instead of accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..config import ConfigError
from .bench_teacher import prepare_teacher
from .report import fmt_bytes, markdown_table, print_report, run_worker, serve_worker, write_results

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class Variant:
    """One configuration of a sweep: a label, the run-file overrides that make it, and the
    values that identify it in tables and plots (e.g. ``{"temperature": 2.0}``)."""

    label: str
    overrides: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- the base run
def default_run(quick: bool) -> dict[str, Any]:
    """The offline base run: SST-2 from ../shared/data (else the embedded task) with the bundled
    MiniLM-L6 teacher; ``quick``: a tiny random BERT teacher on a slice of the embedded task."""
    distill = dict(meta_update="none", temperature=2.0, alpha=0.5, student_lr=5e-4, teacher_lr=2e-5,
                   pilot_lr=1e-2, quiz_fraction=0.1, batch_size=16, max_length=64, max_steps=120,
                   eval_batch_size=64)
    if quick:
        return dict(task="classification", teacher="tiny", student="first:2", data="embedded", n_train=400,
                    n_eval=120, finetune=dict(epochs=8, lr=3e-3, batch_size=32),
                    distill=dict(distill, student_lr=3e-3, batch_size=16, max_length=32, max_steps=16))
    sst2 = SHARED_DATA / "sst2"
    data = str(sst2) if sst2.is_dir() else "embedded"
    return dict(task="classification", teacher="embedded", student="layers:0,5", data=data, n_train=4000,
                n_eval=None if data != "embedded" else 500, finetune=dict(epochs=2, lr=5e-5, n_train=4000),
                distill=distill)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every sweep benchmark shares."""
    p.add_argument("--quick", action="store_true", help="tiny random teacher, a data slice, a few steps (< 2 min)")
    p.add_argument("--config", help="run file (YAML, as for `metakd distill`) to sweep instead of the default")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base-run setting, e.g. --set distill.meta_update=lora --set n_train=2000")
    p.add_argument("--steps", type=int, help="training steps per run (distill.max_steps)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; every variant runs once per seed "
                                                 "(default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: torch's choice)")
    p.add_argument("--no-finetune", action="store_true",
                   help="use the teacher as it is (one already trained on the task) instead of fine-tuning it")
    p.add_argument("--out", default="results", help="directory for the result files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)


def parse_common(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the shared flags (usage errors name the flag); sets ``args.seed_list``."""
    args.seed_list = parse_seeds(p, "--seeds", args.seeds)
    for name in ("steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be >= 1")


def parse_seeds(p: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """Distinct comma-separated integers from ``text``; a usage error naming ``flag`` otherwise."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        p.error(f"{flag} takes comma-separated integers; got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        p.error(f"{flag} must list distinct integers; got {text!r}")
    return seeds


def base_run(args: argparse.Namespace):
    """The RunConfig the variants change: ``--config`` (or the default) with ``--set`` and
    ``--steps`` applied; raises ConfigError on a bad value before any work starts."""
    from ..run import RunConfig, apply_overrides

    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"run config not found: {path}")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of run config keys")
    else:
        values = default_run(args.quick)
    overrides = list(args.overrides) + ([f"distill.max_steps={args.steps}"] if args.steps else [])
    return RunConfig.from_dict(apply_overrides(values, overrides))


def with_overrides(run, overrides: dict[str, Any]):
    """``run`` with dotted-key overrides applied (validated like a run file)."""
    from ..run import RunConfig

    values = run.to_dict()
    for key, value in overrides.items():
        target = values
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return RunConfig.from_dict(values)


# ---------------------------------------------------------------------------- one run (worker)
def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Distil one variant with one seed (in its own process, see report.run_worker)."""
    import torch

    from ..run import RunConfig, distill

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if not spec.get("progress", True):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="metakd-sweep-") as tmp:
        run = replace(RunConfig.from_dict(spec["run"]), output=tmp)
        result = distill(run, progress=spec.get("progress", True))
        history = json.loads((Path(tmp) / "metrics.json").read_text())["history"]
    seconds = [h["seconds"] for h in history["train"]]
    keep = ("student", "teacher_before", "teacher_after", "train", "steps", "trainable_teacher_params",
            "student_params", "trainable_student_params", "student_generation", "teacher_generation")
    return {"label": spec["label"], "values": spec["values"], "seed": spec["seed"], "threads": torch.get_num_threads(),
            **{k: result[k] for k in keep if k in result},
            "median_step_seconds": statistics.median(seconds) if seconds else None,
            "eval_curve": history["eval"], "student_loss": [h["student_loss"] for h in history["train"]]}


def run_sweep(name: str, args: argparse.Namespace, run, variants: Sequence[Variant],
              teacher: dict[str, Any]) -> list[dict[str, Any]]:
    """Every variant with every seed, each in a fresh process; returns the workers' results."""
    jobs = [(v, seed) for v in variants for seed in args.seed_list]
    results = []
    for i, (variant, seed) in enumerate(jobs, 1):
        overrides = dict(variant.overrides, teacher=teacher["teacher_dir"], **{"distill.seed": seed})
        cfg = with_overrides(run, overrides)
        print(f"[{i}/{len(jobs)}] {name}: {variant.label}, seed {seed}", file=sys.stderr)
        spec = {"label": variant.label, "values": variant.values, "seed": seed, "threads": args.threads,
                "progress": not args.no_progress, "run": cfg.to_dict()}
        results.append(run_worker(__name__, spec))
    return results


def check_data(run) -> dict[str, Any]:
    """Load the base run's data once in the parent so a bad path or column fails before any work."""
    from ..data import DataError
    from ..run import load_data

    splits = load_data(run)
    if not splits["train"] or not splits["eval"]:
        raise DataError(f"data {run.data!r} has an empty train or eval split")
    return splits


# ---------------------------------------------------------------------------- summaries
def quality_keys(task: str) -> list[tuple[str, str, str]]:
    """(key in the student scores, column title, format) of the quality figures of a task."""
    if task == "causal_lm":
        return [("perplexity", "perplexity", ".2f"), ("loss", "NLL (nats/token)", ".4f")]
    return [("accuracy", "accuracy", ".4f"), ("f1", "F1", ".4f"), ("loss", "NLL", ".4f")]


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _figures(r: dict[str, Any]) -> dict[str, float | None]:
    out = dict(r["student"])
    out["tokens_per_second"] = r["student"].get("tokens_per_second")
    if "student_generation" in r:
        out["generation_tokens_per_second"] = r["student_generation"]["generation_tokens_per_second"]
    out["median_step_seconds"] = r["median_step_seconds"]
    out["train_seconds"] = r["train"]["seconds"]
    out["peak_memory_bytes"] = r["train"]["peak_memory_bytes"]
    out["energy_joules"] = r["train"]["energy_joules"]
    out["teacher_accuracy_after"] = r["teacher_after"].get("accuracy")
    out["teacher_perplexity_after"] = r["teacher_after"].get("perplexity")
    return out


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per variant (in order): mean ± std over seeds of every numeric figure."""
    out = []
    for label in dict.fromkeys(r["label"] for r in results):
        runs = [r for r in results if r["label"] == label]
        figures = [_figures(r) for r in runs]
        entry: dict[str, Any] = {"label": label, "values": runs[0]["values"], "seeds": [r["seed"] for r in runs],
                                 "trainable_teacher_params": runs[0]["trainable_teacher_params"],
                                 "trainable_student_params": runs[0].get("trainable_student_params"),
                                 "student_params": runs[0]["student_params"],
                                 "energy_estimated": any(r["train"]["energy_estimated"] for r in runs)}
        for key in figures[0]:
            values = [f.get(key) for f in figures]
            if all(isinstance(v, (int, float)) for v in values):
                entry[key] = mean_std([float(v) for v in values])
        out.append(entry)
    return out


def pm(stat: dict[str, float] | None, fmt: str, n: int) -> str:
    """``mean ± std`` (just the mean for one seed); "n/a" when missing."""
    if stat is None:
        return "n/a"
    return f"{stat['mean']:{fmt}} ± {stat['std']:{fmt}}" if n > 1 else f"{stat['mean']:{fmt}}"


def standard_columns(task: str) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """The figures every sweep table shows after its own columns: quality, speed, cost."""
    cols: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
    for key, title, fmt in quality_keys(task):
        cols.append((title, lambda e, key=key, fmt=fmt: pm(e.get(key), fmt, len(e["seeds"]))))
    cols.append(("student tokens/s (eval)", lambda e: pm(e.get("tokens_per_second"), ".0f", len(e["seeds"]))))
    if task == "causal_lm":
        cols.append(("generation tokens/s",
                     lambda e: pm(e.get("generation_tokens_per_second"), ".1f", len(e["seeds"]))))
    cols.append(("s/step (median)", lambda e: pm(e.get("median_step_seconds"), ".3f", len(e["seeds"]))))
    cols.append(("peak memory", lambda e: fmt_bytes(e["peak_memory_bytes"]["mean"])
                 if e.get("peak_memory_bytes") else "n/a"))
    return cols


def table(summary: Sequence[dict[str, Any]], own: Sequence[tuple[str, Callable[[dict[str, Any]], str]]],
          task: str, extra: Sequence[tuple[str, Callable[[dict[str, Any]], str]]] = ()) -> str:
    """A markdown table: the benchmark's own columns, then the standard ones, then ``extra``."""
    cols = list(own) + standard_columns(task) + list(extra)
    return markdown_table([c for c, _ in cols], [[fn(e) for _, fn in cols] for e in summary])


def provenance(results: Sequence[dict[str, Any]]) -> dict[str, str]:
    """For every figure of the results: measured, or estimated and how."""
    energy = {r["train"]["energy_source"] for r in results}
    estimated = any(r["train"]["energy_estimated"] for r in results)
    memory = {r["train"]["memory_source"] for r in results}
    return {"quality (accuracy/F1/NLL/perplexity)": "measured on the held-out split",
            "tokens_per_second": "measured: student forward over the held-out split, no gradients",
            "generation_tokens_per_second": "measured: greedy generation (causal_lm only)",
            "median_step_seconds": "measured: wall time per training step",
            "peak_memory_bytes": "measured: " + ", ".join(sorted(memory)) + " of one process per run",
            "energy_joules": ("estimated: " if estimated else "measured: ") + ", ".join(sorted(energy))}


def describe(run, teacher: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Notes naming what was run: data, teacher, student, schedule, seeds, threads."""
    d = run.distill
    teacher_name = ("tiny random BERT (4 layers, width 64)" if run.teacher == "tiny"
                    else "pretrained MiniLM-L6-H384 (bundled)" if run.teacher == "embedded" else run.teacher)
    ft = run.finetune
    fine_tuned = ("used as given" if args.no_finetune else
                  f"fine-tuned on the task ({ft['epochs']} epochs, lr {ft['lr']:g}, "
                  f"{ft['n_train'] or run.n_train or 'all'} examples)")
    score = ""
    if teacher.get("eval"):
        key = "perplexity" if run.task == "causal_lm" else "accuracy"
        score = f"; teacher held-out {key} {teacher['eval'][key]:.4f}"
    return [
        f"data {run.data} ({run.task}; n_train {run.n_train}, n_eval {run.n_eval}); teacher: {teacher_name}, "
        f"{fine_tuned}{score}; student: {run.student}",
        f"base run: meta_update={d.meta_update}, {d.max_steps} steps of batch {d.batch_size}, max_length {d.max_length}, "
        f"T={d.temperature}, alpha={d.alpha}, student_lr={d.student_lr}; seeds {', '.join(map(str, args.seed_list))}"
        + (" (mean ± sample std over seeds)" if len(args.seed_list) > 1 else "")
        + f"; torch threads per run: {args.threads or 'default'}",
        "peak memory: peak RSS of one process per run on CPU (includes loading the models), CUDA max allocated "
        "on a GPU; tokens/s: the student's forward over the held-out split",
    ]


def finish(name: str, args: argparse.Namespace, run, teacher: dict[str, Any], results: list[dict[str, Any]],
           summary: list[dict[str, Any]], body: str, notes: Sequence[str],
           plot: Callable[[Path], None], extra: dict[str, Any] | None = None) -> int:
    """Write ``NAME.{json,md,png}`` under ``--out`` and print the report."""
    notes = list(notes) + describe(run, teacher, args)
    payload = {"benchmark": name, "quick": args.quick, "seeds": args.seed_list, "threads": args.threads,
               "base_run": run.to_dict(), "teacher": teacher, "summary": summary, "results": results,
               "measured": provenance(results), **(extra or {})}
    paths = write_results(args.out, name, payload, body, notes)
    png = Path(args.out) / f"{name}.png"
    plot(png)
    print_report(payload, body, notes, [paths["json"], paths["md"], png])
    return 0


def sweep_main(name: str, argv: list[str] | None, doc: str,
               extra_args: Callable[[argparse.ArgumentParser], None],
               variants: Callable[[argparse.Namespace, Any, dict[str, Any]], list[Variant]],
               report: Callable[..., int]) -> int:
    """Parse the flags, check the base run and data, prepare the teacher, run every variant x
    seed, then hand the results to ``report(args, run, teacher, results, summary)``."""
    prog = "metakd bench " + name.replace("_", "-")
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_arguments(p)
    extra_args(p)
    args = p.parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, run_variant)
    parse_common(p, args)
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    run = base_run(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    chosen = variants(args, run, {})  # validates the variant flags before any work
    for v in chosen:
        with_overrides(run, v.overrides)  # a bad variant value fails here, not in the middle of the sweep
    splits = check_data(run)
    print(f"data: {run.data}: {len(splits['train'])} train, {len(splits['eval'])} eval "
          f"{'documents' if run.task == 'causal_lm' else 'examples'}", file=sys.stderr)
    teacher = prepare_teacher(run, fine_tune=not args.no_finetune, progress=not args.no_progress)
    chosen = variants(args, run, teacher)
    results = run_sweep(name, args, run, chosen, teacher)
    return report(args, run, teacher, results, summarize(results))


if __name__ == "__main__":
    sys.exit(serve_worker(sys.argv[2:], run_variant))
