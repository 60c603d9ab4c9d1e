"""The report of the quality study: per-arm summaries with paired differences, its tables, curves,
verdict, and the result files (``write_report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from . import sweep
from .quality_runs import COLORS, LABELS, NAME, teacher_groups
from .report import markdown_table, print_report, write_results
from .stats import paired_difference


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


def delta_text(d: dict[str, Any] | None) -> str:
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
        rows.append([e["label"], n, _pm(e["last"], n=n), delta_text(e.get("delta_last")), _pm(e["best"], n=n),
                     delta_text(e.get("delta_best")), _pm(e["best_step"], ".0f", n),
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


def write_report(args, run, teacher, timing: dict[str, float], grid: Sequence[dict[str, Any]],
                 chosen: dict[str, dict[str, Any]], chosen_values: dict[str, dict[str, Any]], single: set[str],
                 results: Sequence[dict[str, Any]]) -> int:
    """Write the study's report (JSON, Markdown, curves) and print it: ``grid`` the grid's runs,
    ``chosen`` the grid run chosen per mode, ``chosen_values`` the values used per mode (``single``:
    the modes given one value each, no grid run), ``results`` the main runs, then the controls."""
    teachers = teacher_groups(results)
    summary = summarize(results, args.seed_list)
    body = (f"Per arm (seeds {', '.join(map(str, args.seed_list))}; accuracy on the evaluation split; Δ = arm − "
            "plain KD over the same seeds, in points, with a 95% t-interval):\n\n" + main_table(summary)
            + "\n\nPer seed:\n\n" + per_seed_table(results))
    if grid:
        body += (f"\n\nGrid (seed {args.grid_seed}, not a compared seed; chosen by validation accuracy; these runs "
                 "only choose and are not among the compared runs above):\n\n" + grid_table(grid, chosen))
    timing["total"] = sum(timing.values())
    ran = [*grid, *results]  # results: the main runs, then the controls
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
