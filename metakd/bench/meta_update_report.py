"""The report of ``metakd bench meta-update``: summaries over seeds, the tables, the paired
timing ratios, the notes and the figure. Pure functions of the workers' results."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from .lockstep import paired_ratios
from .report import fmt_bytes, markdown_table

# The phases MetaDistiller times, in the order of a meta-step; META_PHASES make up the meta-gradient
# and the teacher update (what plain KD does not do).
PHASES = ("teacher_forward", "pilot", "quiz", "directional_derivative", "teacher_backward", "teacher_step",
          "student_step")
META_PHASES = ("pilot", "quiz", "directional_derivative", "teacher_backward", "teacher_step")


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


# ---------------------------------------------------------------------------- summaries
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _stat(values: list[float]) -> dict[str, float]:
    return dict(zip(("mean", "std"), _mean_std(values)))


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per configuration (in run order): mean and sample standard deviation over
    seeds of scores, time, memory, and the student's distance to the teacher in points."""
    out = []
    for key in dict.fromkeys(r["config"] for r in results):
        runs = [r for r in results if r["config"] == key]
        entry: dict[str, Any] = {"config": key, "mode": runs[0]["mode"], "label": runs[0]["label"],
                                 "seeds": [r["seed"] for r in runs],
                                 "trainable_teacher_params": runs[0]["trainable_teacher_params"]}
        series = {
            "accuracy": [r["student"]["accuracy"] for r in runs],
            "accuracy_before": [r["student_before"]["accuracy"] for r in runs],
            "f1": [r["student"]["f1"] for r in runs],
            "precision": [r["student"]["precision"] for r in runs],
            "recall": [r["student"]["recall"] for r in runs],
            # the student's accuracy minus the teacher's (as fine-tuned, before distillation), in points
            "points_vs_teacher": [100 * (r["student"]["accuracy"] - r["teacher_before"]["accuracy"]) for r in runs],
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
        for name, values in series.items():
            entry[name] = _stat(values)
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
            entry[key] = _stat(values) if values and all(v is not None for v in values) else None
        out[p] = entry
    return out


def timing_ratios(results: list[dict[str, Any]], comparisons: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """For each ``(a, b)`` of configuration keys that both ran: the per-round ratio of a's step
    time to b's, paired within a round of the same seed (the rounds interleave the
    configurations), summarised over all rounds of all seeds (``lockstep.paired_ratios``)."""
    by = {(r["config"], r["seed"]): r for r in results}
    labels = {r["config"]: r["label"] for r in results}
    seeds = list(dict.fromkeys(r["seed"] for r in results))
    out = []
    for a, b in comparisons:
        num: list[float] = []
        den: list[float] = []
        for seed in seeds:
            ra, rb = by.get((a, seed)), by.get((b, seed))
            if ra is None or rb is None:
                continue
            n = min(len(ra["step_seconds"]), len(rb["step_seconds"]))
            num += ra["step_seconds"][:n]
            den += rb["step_seconds"][:n]
        stat = paired_ratios(num, den)
        if stat is not None:
            out.append({"numerator": a, "denominator": b, "label": f"{labels[a]} / {labels[b]}", **stat})
    return out


# ---------------------------------------------------------------------------- tables
def _pm(stat: dict[str, float], fmt: str, n: int) -> str:
    return f"{stat['mean']:{fmt}} ± {stat['std']:{fmt}}" if n > 1 else f"{stat['mean']:{fmt}}"


def build_table(summary: list[dict[str, Any]]) -> str:
    """The main table: one row per configuration."""
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
            memory, energy, f"{_pm(e['accuracy_before'], '.4f', n)} → {_pm(e['accuracy'], '.4f', n)}",
            f"{e['points_vs_teacher']['mean']:+.1f}" + (f" ± {e['points_vs_teacher']['std']:.1f}" if n > 1 else ""),
            _pm(e["f1"], ".4f", n),
            f"{e['teacher_accuracy_before']:.4f} → {_pm(e['teacher_accuracy_after'], '.4f', n)}",
        ])
    cols = ["mode", "trainable teacher params", "s/step (median)", "peak memory", "energy",
            "student acc (start → end)", "student − teacher (points)", "student F1", "teacher acc before → after"]
    return markdown_table(cols, rows)


def ratio_table(ratios: list[dict[str, Any]]) -> str:
    """Paired per-round step-time ratios: median, interquartile range, min–max, rounds."""
    rows = [[r["label"], f"{r['median']:.2f}×", f"{r['q1']:.2f}–{r['q3']:.2f}×", f"{r['min']:.2f}–{r['max']:.2f}×",
             r["rounds"]] for r in ratios]
    return markdown_table(["time per step", "median of per-round ratios", "IQR", "min–max", "rounds"], rows)


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


def savings(summary: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> list[str]:
    """Notes: the paired time ratios, LoRA over full in parameters and memory, and per
    meta-gradient phase."""
    lines = [f"{r['label']}: {r['median']:.2f}× time per step (median of {r['rounds']} paired rounds, "
             f"IQR {r['q1']:.2f}–{r['q3']:.2f}×, min–max {r['min']:.2f}–{r['max']:.2f}×)" for r in ratios]
    by = {e["config"]: e for e in summary}
    if "lora" not in by or "full" not in by:
        return lines
    lo, fu = by["lora"], by["full"]
    lines.append(
        f"LoRA / full meta-update: trainable teacher parameters {lo['trainable_teacher_params'] / fu['trainable_teacher_params']:.4f}x, "
        f"peak memory {lo['peak_memory_bytes']['mean'] / max(fu['peak_memory_bytes']['mean'], 1):.2f}x")
    parts = []
    for p in META_PHASES:
        a, b = lo.get("phases", {}).get(p), fu.get("phases", {}).get(p)
        if not a or not b:
            continue
        found = []
        for key, what in (("seconds_per_step", "time"), ("peak_memory_bytes", "peak memory"),
                          ("energy_joules_per_step", "energy")):
            if a[key] and b[key] and b[key]["mean"] > 0:
                found.append(f"{what} {a[key]['mean'] / b[key]['mean']:.2f}x")
        if found:
            parts.append(f"{p} {', '.join(found)}")
    if parts:
        lines.append("LoRA / full meta-update per meta-gradient phase (means over the steps): " + "; ".join(parts))
    return lines


def learning_notes(summary: list[dict[str, Any]], chance: float, teacher: float) -> list[str]:
    """How far each student got: from where it started, against chance and the teacher."""
    parts = [f"{e['label']} {100 * e['accuracy_before']['mean']:.1f}% → {100 * e['accuracy']['mean']:.1f}% "
             f"({e['points_vs_teacher']['mean']:+.1f} points vs the teacher)" for e in summary]
    return [f"student accuracy on the held-out split (start → end): {'; '.join(parts)}; teacher "
            f"{100 * teacher:.1f}% (as fine-tuned), chance (majority class of the held-out split) {100 * chance:.1f}%"]


# ---------------------------------------------------------------------------- provenance
def measured_flags(results: list[dict[str, Any]]) -> dict[str, Any]:
    """For every figure of the report: True where measured, False where estimated, None where not
    available (``sources`` in the payload says by what)."""
    energy_measured = not any(r["train"]["energy_estimated"] for r in results)
    phase_energy = not any(r.get("phase_energy_estimated", True) for r in results)
    phase_memory = all(not r.get("phase_memory_source", "n/a").startswith("n/a") for r in results)
    return {
        "trainable_teacher_params": True, "student_params": True,
        "median_step_seconds": True, "mean_step_seconds": True, "step_seconds": True, "time_ratios": True,
        "train_seconds": True, "train_cpu_seconds": True,
        "peak_memory_bytes": True, "energy_joules": energy_measured,
        "accuracy": True, "f1": True, "precision": True, "recall": True, "points_vs_teacher": True,
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
        "time_ratios": "per-round ratios of step seconds; the configurations take one step each in turn, "
                       "in separate processes (metakd.bench.lockstep)",
        "peak_memory_bytes": first.get("train", {}).get("memory_source", "n/a") + " of the worker process",
        "energy_joules": first.get("train", {}).get("energy_source", "n/a"),
        "phases.seconds_per_step": "wall clock per phase (PhaseTimer)",
        "phases.cpu_seconds_per_step": "getrusage user + system time per phase",
        "phases.peak_memory_bytes": first.get("phase_memory_source", "n/a"),
        "phases.energy_joules_per_step": first.get("phase_energy_source", "n/a"),
    }


# ---------------------------------------------------------------------------- figure
def plot(summary: list[dict[str, Any]], ratios: list[dict[str, Any]], path: Path) -> None:
    """Four panels: paired time ratios (median, IQR, min–max), peak memory, student accuracy
    (start and end, teacher line) and the per-phase time stack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [e["label"] for e in summary]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.9))
    palette = ["#888888", "#2a9d8f", "#e76f51", "#264653", "#e9c46a", "#f4a261"]
    colors = [palette[i % len(palette)] for i in range(len(summary))]

    ax = axes[0]
    if ratios:
        xs = range(len(ratios))
        med = [r["median"] for r in ratios]
        ax.bar(xs, med, color="#457b9d")
        ax.errorbar(xs, med, yerr=[[m - r["q1"] for m, r in zip(med, ratios)], [r["q3"] - m for m, r in zip(med, ratios)]],
                    fmt="none", ecolor="black", capsize=5, label="IQR")
        ax.scatter(list(xs) * 2, [r["min"] for r in ratios] + [r["max"] for r in ratios], marker="_", s=200,
                   color="black", label="min, max")
        ax.set_xticks(list(xs), [r["label"].replace(" / ", "\n/ ") for r in ratios], fontsize=7)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.legend(fontsize=7)
    ax.set_title("time per step, paired ratio (median)")

    ax = axes[1]
    stats = [e["peak_memory_bytes"] for e in summary]
    ax.bar(labels, [st["mean"] * 2.0**-20 for st in stats], yerr=[st["std"] * 2.0**-20 for st in stats],
           color=colors, capsize=4)
    ax.set_title("peak memory (MiB)")

    ax = axes[2]
    ax.bar(labels, [e["accuracy"]["mean"] for e in summary], yerr=[e["accuracy"]["std"] for e in summary],
           color=colors, capsize=4, label="end")
    ax.scatter(labels, [e["accuracy_before"]["mean"] for e in summary], marker="x", color="black", label="start",
               zorder=3)
    if summary:
        ax.axhline(summary[0]["teacher_accuracy_before"], color="black", ls="--", lw=1, label="teacher")
    ax.set_ylim(0, 1)
    ax.set_title("student accuracy")
    ax.legend(fontsize=7, loc="lower right")

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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in axes[1:]:
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
