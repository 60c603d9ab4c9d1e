"""Plain KD vs LoRA meta-KD vs full meta-KD across seeds: the same base run distilled with
distill.meta_update in {none, lora, full}, every mode once per seed. Reports final held-out
quality (mean ± sample std over seeds), the teacher's quality before and after distillation
(the meta modes change it), trainable teacher parameters, time and memory, and the held-out
quality curve over training steps (accuracy; perplexity for a causal LM). Prints a table and
writes results/kd_vs_meta.{json,md,png}.

    metakd bench kd-vs-meta [--quick] [--modes none,lora,full] [--seeds 0,1,2] [--eval-every N]
                            [--steps N] [--config RUN.yaml] [--set key=value] [--threads 1]

Defaults: seeds 0,1,2 (just 0 with --quick, a smoke test); the offline SST-2 base run trains
FULL_STEPS (40) steps (QUICK_STEPS, 8, with --quick) unless --steps, --config or --set
distill.max_steps says otherwise; the held-out split is scored every max(1, steps // 6) steps
(--eval-every) and after the last step. A meta-KD step costs about 3-4 plain KD steps.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from . import sweep
from .report import fmt_bytes, markdown_table
from .sweep import Variant

NAME = "kd_vs_meta"
MODES = ("none", "lora", "full")
MODE_LABELS = {"none": "plain KD", "lora": "LoRA meta-KD", "full": "full meta-KD"}
COLORS = {"none": "#888888", "lora": "#2a9d8f", "full": "#e76f51"}
LINESTYLES = {"none": "--", "lora": "-", "full": "-"}  # plain KD dashed: LoRA meta-KD can lie right on it
# --quick runs one seed: each run is a fresh process that spends ~5-10 s importing torch,
# transformers and peft, so 3 modes x 2 seeds took ~2.5 min on a busy 2-core machine (1 seed: ~1 min)
SEEDS, QUICK_SEEDS = "0,1,2", "0"
# Steps of the default offline run (SST-2, MiniLM-L6 teacher, batch 16) for this benchmark. At one
# thread the 3 modes x 3 seeds cost about 3 x (1.05 + 3.6 + 3.9) s per step, on top of ~3 min fixed
# per run: loading (~15 s), the teacher scored on the 872 dev examples before and after (~40 s
# each) and the student at every curve point (~11 s each, 7 points): ~17 + 26 min at 40 steps.
FULL_STEPS = 40
QUICK_STEPS = 8
CURVE_POINTS = 6


# ---------------------------------------------------------------------------- flags
def parse_modes(text: str) -> list[str]:
    """``"lora,none"`` -> ``["none", "lora"]`` (canonical order); argparse type of ``--modes``."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad or len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(f"takes distinct modes from {','.join(MODES)}; got {text!r}"
                                         + (f" ({', '.join(map(repr, bad))} unknown)" if bad else ""))
    return [m for m in MODES if m in modes]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def default_eval_every(steps: int, points: int = CURVE_POINTS) -> int:
    """Score the held-out split about ``points`` times over ``steps`` steps (the last is always scored)."""
    return max(1, steps // points)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modes", type=parse_modes, default=list(MODES),
                   help=f"comma-separated subset of {','.join(MODES)} (default: all three)")
    p.add_argument("--eval-every", type=positive_int, metavar="N",
                   help=f"score the held-out split every N steps for the curve (default: max(1, steps // "
                        f"{CURVE_POINTS}); the last step is always scored)")
    p.set_defaults(seeds=SEEDS)
    for action in p._actions:  # the harness's flags, with this benchmark's defaults
        if action.dest == "seeds":
            action.help = f"comma-separated seeds; every mode runs once per seed (default: {SEEDS}; " \
                          f"{QUICK_SEEDS} with --quick)"
        elif action.dest == "steps":
            action.help = (f"training steps per run (distill.max_steps; default: {FULL_STEPS} for the offline "
                           f"SST-2 run, {QUICK_STEPS} with --quick, the run file's with --config)")


def with_defaults(argv: Sequence[str]) -> list[str]:
    """``argv`` with this benchmark's defaults in front, so that flags the user gives win: the seeds
    (one with --quick) and, for the default offline run, ``--steps FULL_STEPS`` (QUICK_STEPS with
    --quick) unless the run's length comes from --config or --set distill.max_steps/epochs."""
    argv = list(argv)
    pre = argparse.ArgumentParser(prog="metakd bench kd-vs-meta", add_help=False)
    pre.add_argument("--quick", action="store_true")
    pre.add_argument("--config")
    pre.add_argument("--set", dest="overrides", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    front = ["--seeds", QUICK_SEEDS if known.quick else SEEDS]
    sets_length = any(o.split("=", 1)[0].strip() in ("distill.max_steps", "distill.epochs") for o in known.overrides)
    if not (known.config or sets_length):
        front += ["--steps", str(QUICK_STEPS if known.quick else FULL_STEPS)]
    return front + argv


def variants(args: argparse.Namespace, run: Any, teacher: dict[str, Any]) -> list[Variant]:
    steps = run.distill.max_steps
    if args.eval_every is None and steps is None:
        raise sweep.ConfigError("the base run sets no distill.max_steps (it trains by epochs): pass --steps N or "
                                "--eval-every N")
    every = args.eval_every or default_eval_every(steps)
    if steps is not None and every >= steps:
        raise sweep.ConfigError(f"--eval-every {every} must be below the run's {steps} steps (the last step is "
                                "always scored; the curve needs a point before it)")
    if not teacher and len(args.seed_list) < 2 and not args.quick:  # first call: warn before any work
        print(f"warning: one seed ({args.seed_list[0]}): no seed spread, so no mode can be told apart from "
              "noise; pass --seeds 0,1,2", file=sys.stderr)
    args.eval_every_used = every
    return [Variant(MODE_LABELS[m], {"distill.meta_update": m, "distill.eval_every": every},
                    {"mode": m, "meta_update": m}) for m in args.modes]


# ---------------------------------------------------------------------------- pure summaries
def curve(result: dict[str, Any], key: str) -> list[tuple[int, float]]:
    """``(step, score)`` of one run's held-out curve (points without ``key`` are skipped)."""
    return [(int(p["step"]), float(p[key])) for p in result["eval_curve"] if isinstance(p.get(key), (int, float))]


def curve_stats(curves: Sequence[Sequence[tuple[int, float]]]) -> list[dict[str, float]]:
    """Mean and sample std across seeds at every step all ``curves`` share, in step order
    (std 0 for one curve)."""
    if not curves:
        return []
    by_seed = [dict(c) for c in curves]
    steps = sorted(set.intersection(*(set(c) for c in by_seed)))
    return [{"step": s, **sweep.mean_std([c[s] for c in by_seed]), "n": len(by_seed)} for s in steps]


def compare(base: dict[str, float], other: dict[str, float]) -> dict[str, Any]:
    """``other`` - ``base`` in units of the pooled seed std sqrt((s_b² + s_o²) / 2); ``within``:
    whether the difference is at most one pooled std (None when there is no spread to judge by)."""
    diff = other["mean"] - base["mean"]
    pooled = math.sqrt((base["std"] ** 2 + other["std"] ** 2) / 2)
    if pooled == 0:
        return {"diff": diff, "pooled_std": 0.0, "std_units": None, "within": None}
    return {"diff": diff, "pooled_std": pooled, "std_units": diff / pooled, "within": abs(diff) <= pooled}


def ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> float | None:
    """``a["mean"] / b["mean"]`` (None when either is missing or ``b`` is 0)."""
    if not a or not b or not b["mean"]:
        return None
    return a["mean"] / b["mean"]


def _teacher_key(task: str) -> str:
    return "perplexity" if task == "causal_lm" else "accuracy"


def enrich(summary: list[dict[str, Any]], results: Sequence[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """Add to each summary entry its mode, the held-out curve (per seed and mean/std per step),
    and the teacher's quality before and after distillation (mean ± std over seeds)."""
    key, tkey = sweep.quality_keys(task)[0][0], _teacher_key(task)
    for entry in summary:
        runs = [r for r in results if r["label"] == entry["label"]]
        curves = [curve(r, key) for r in runs]
        entry["mode"] = entry["values"]["mode"]
        entry["curve"] = {"key": key, "per_seed": {str(r["seed"]): [list(p) for p in c] for r, c in zip(runs, curves)},
                          "mean_std": curve_stats(curves)}
        for when in ("teacher_before", "teacher_after"):
            values = [r[when].get(tkey) for r in runs]
            entry[f"{when}_{tkey}"] = (sweep.mean_std([float(v) for v in values])
                                       if all(isinstance(v, (int, float)) for v in values) else None)
    return summary


def notes_for(summary: Sequence[dict[str, Any]], task: str) -> tuple[list[str], dict[str, Any]]:
    """Notes computed from the measured summary, and the figures behind them (for the JSON)."""
    key, title, fmt = sweep.quality_keys(task)[0]
    lower_better = key == "perplexity"
    by_mode = {e["mode"]: e for e in summary}
    notes, figures = [], {"comparisons": {}, "cost_ratios": {}}
    base = by_mode.get("none")
    n_seeds = min(len(e["seeds"]) for e in summary)
    for mode in ("lora", "full"):
        if base is None or mode not in by_mode or not base.get(key) or not by_mode[mode].get(key):
            continue
        c = compare(base[key], by_mode[mode][key])
        figures["comparisons"][mode] = c
        better = (c["diff"] < 0) if lower_better else (c["diff"] > 0)
        head = (f"{MODE_LABELS[mode]} - plain KD: {c['diff']:+{fmt}} {title} "
                f"({'better' if better else 'worse' if c['diff'] else 'no change'})")
        if c["within"] is None:
            notes.append(head + "; no seed spread to judge it by (one seed, or identical results)")
        else:
            verdict = ("within the seed spread: not distinguishable from plain KD" if c["within"]
                       else "beyond one seed std")
            notes.append(head + f" = {c['std_units']:+.2f} pooled seed std ({c['pooled_std']:{fmt}}); {verdict} "
                         f"({n_seeds} seeds per mode; a rough guide, not a significance test)")
    cost = figures["cost_ratios"]
    for mode in ("lora", "full"):
        if base is not None and mode in by_mode:
            cost[f"{mode}/none_step_seconds"] = ratio(by_mode[mode].get("median_step_seconds"),
                                                      base.get("median_step_seconds"))
            cost[f"{mode}/none_peak_memory"] = ratio(by_mode[mode].get("peak_memory_bytes"),
                                                     base.get("peak_memory_bytes"))
    if "lora" in by_mode and "full" in by_mode:
        lora, full = by_mode["lora"], by_mode["full"]
        cost["lora/full_step_seconds"] = ratio(lora.get("median_step_seconds"), full.get("median_step_seconds"))
        cost["lora/full_peak_memory"] = ratio(lora.get("peak_memory_bytes"), full.get("peak_memory_bytes"))
        params = full["trainable_teacher_params"]
        cost["lora/full_trainable_teacher_params"] = lora["trainable_teacher_params"] / params if params else None

    def x(v: float | None, fmt: str = ".2f") -> str:
        return "n/a" if v is None else f"{v:{fmt}}x"

    if "lora/full_step_seconds" in cost:
        notes.append(f"LoRA / full meta-KD: time per step {x(cost['lora/full_step_seconds'])}, peak memory "
                     f"{x(cost['lora/full_peak_memory'])}, trainable teacher params "
                     f"{x(cost['lora/full_trainable_teacher_params'], '.4f')}")
    vs_plain = [f"{MODE_LABELS[m]} {x(cost[f'{m}/none_step_seconds'])} time per step, "
                f"{x(cost[f'{m}/none_peak_memory'])} peak memory" for m in ("lora", "full")
                if f"{m}/none_step_seconds" in cost]
    if vs_plain:
        notes.append("vs plain KD: " + "; ".join(vs_plain) + " (median s/step; meta-steps include the pilot step "
                     "and the meta-gradient)")
    return notes, figures


# ---------------------------------------------------------------------------- report
def _teacher_column(task: str):
    tkey = _teacher_key(task)
    fmt = ".2f" if tkey == "perplexity" else ".4f"

    def cell(e: dict[str, Any]) -> str:
        before, after = e.get(f"teacher_before_{tkey}"), e.get(f"teacher_after_{tkey}")
        n = len(e["seeds"])
        return f"{sweep.pm(before, fmt, n)} → {sweep.pm(after, fmt, n)}"

    return (f"teacher {tkey} before → after", cell)


def per_seed_table(results: Sequence[dict[str, Any]], task: str) -> str:
    keys = sweep.quality_keys(task)
    tkey = _teacher_key(task)
    cols = (["mode", "seed"] + [title for _, title, _ in keys]
            + ["s/step (median)", "peak memory", f"teacher {tkey} after"])
    rows = []
    for r in sorted(results, key=lambda r: (r["seed"], MODES.index(r["values"]["mode"]))):
        after = r["teacher_after"].get(tkey)
        rows.append([r["label"], r["seed"]]
                    + [format(r["student"][k], fmt) if isinstance(r["student"].get(k), (int, float)) else "n/a"
                       for k, _, fmt in keys]
                    + [f"{r['median_step_seconds']:.3f}" if r.get("median_step_seconds") is not None else "n/a",
                       fmt_bytes(r["train"].get("peak_memory_bytes")),
                       format(after, ".2f" if tkey == "perplexity" else ".4f") if after is not None else "n/a"])
    return markdown_table(cols, rows)


def plot(summary: list[dict[str, Any]], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, title, _ = sweep.quality_keys(task)[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    for e in summary:
        stats = e["curve"]["mean_std"]
        steps = [s["step"] for s in stats]
        mean = [s["mean"] for s in stats]
        std = [s["std"] for s in stats]
        color = COLORS[e["mode"]]
        left.plot(steps, mean, marker="o", ms=3, color=color, ls=LINESTYLES[e["mode"]], zorder=3 if e["mode"] == "none"
                  else 2, label=f"{e['label']} (n={len(e['seeds'])})")
        left.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                          color=color, alpha=0.2, linewidth=0)
    left.set_xlabel("training step")
    left.set_ylabel(f"held-out {title}")
    left.set_title(f"held-out {title} during training (mean ± std over seeds)", fontsize=9)
    left.legend(fontsize=8)
    xs = range(len(summary))
    stats = [e.get(key) or {"mean": float("nan"), "std": 0.0} for e in summary]
    right.bar(xs, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], capsize=4,
              color=[COLORS[e["mode"]] for e in summary], alpha=0.8)
    for i, e in enumerate(summary):  # every seed's final score on its bar
        finals = [points[-1][1] for points in e["curve"]["per_seed"].values() if points]
        right.scatter([i] * len(finals), finals, color="black", s=10, zorder=3)
    finals = [p[-1][1] for e in summary for p in e["curve"]["per_seed"].values() if p]
    lows = [v for v in [s["mean"] - s["std"] for s in stats] + finals if math.isfinite(v)]
    highs = [v for v in [s["mean"] + s["std"] for s in stats] + finals if math.isfinite(v)]
    if lows and highs:
        pad = max(0.3 * (max(highs) - min(lows)), 0.02 * max(abs(v) for v in lows + highs), 1e-3)
        right.set_ylim(min(lows) - pad, max(highs) + pad)
    right.set_xticks(list(xs), [e["label"] for e in summary], fontsize=8)
    right.set_ylabel(f"final held-out {title}")
    right.set_title("final (mean ± std; dots: seeds; y axis not from 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args, run, teacher, results, summary) -> int:
    summary = enrich(summary, results, run.task)
    own = [("mode", lambda e: e["label"]), ("trainable teacher params", lambda e: f"{e['trainable_teacher_params']:,}")]
    body = (sweep.table(summary, own, run.task, extra=[_teacher_column(run.task)])
            + "\n\nPer seed:\n\n" + per_seed_table(results, run.task))
    notes, figures = notes_for(summary, run.task)
    points = len(summary[0]["curve"]["mean_std"]) if summary else 0
    every = "every step" if args.eval_every_used == 1 else f"every {args.eval_every_used} steps"
    notes.append(f"curve: held-out {sweep.quality_keys(run.task)[0][1]} {every} and after the last ({points} points "
                 "per run); teacher before: the cached task teacher, the same for every mode (seeds may differ in "
                 "their data slices); after: plain KD leaves it as it was, the meta modes update it")
    if len(args.seed_list) < 2:
        notes.append("one seed: no spread, so the differences above cannot be told apart from noise")
    extra = {"eval_every": args.eval_every_used, "modes": args.modes, "quality_key": sweep.quality_keys(run.task)[0][0],
             "curves": {e["mode"]: {"label": e["label"], **e["curve"]} for e in summary}, **figures}
    return sweep.finish(NAME, args, run, teacher, results, summary, body, notes,
                        lambda png: plot(summary, run.task, png), extra=extra)


def main(argv: list[str] | None = None) -> int:
    return sweep.sweep_main(NAME, with_defaults(sys.argv[1:] if argv is None else argv), __doc__, _args, variants,
                            report)


if __name__ == "__main__":
    sys.exit(main())
