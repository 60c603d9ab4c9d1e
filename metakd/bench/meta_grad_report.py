"""The report of ``metakd bench meta-grad``: ratios against plain KD and ``higher``, the agreement of
the meta-gradients, tables, the issue's targets, plot and result files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .meta_grad_settings import MODES, NAME, PHASE_LABELS, PHASES, PILOTS
from .report import fmt_bytes, markdown_table, print_report, write_results


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got − want| / max |want| (the agreement measure of the tests)."""
    den = float(want.abs().max())
    return float((got - want).abs().max()) / den if den > 0 else float("nan")


def add_ratios_and_agreement(results: list[dict[str, Any]]) -> None:
    plain = {r["depth"]: r for r in results if r["mode"] == "none"}
    ref = {(r["depth"], r["mode"], r["pilot"]): r for r in results
           if r["backend"] == "higher" and r["meta_every"] == 1 and not r["checkpointing"]}
    for r in results:
        p = plain.get(r["depth"])
        if p:
            r["time_vs_plain"] = r["median_step_seconds"] / p["median_step_seconds"]
            if r["peak_memory_bytes"] and p["peak_memory_bytes"]:
                r["memory_vs_plain"] = r["peak_memory_bytes"] / p["peak_memory_bytes"]
        h = ref.get((r["depth"], r["mode"], r["pilot"]))
        if h and r["mode"] != "none":
            r["time_vs_higher"] = r["median_step_seconds"] / h["median_step_seconds"]
            if r["peak_memory_bytes"] and h["peak_memory_bytes"]:
                r["memory_vs_higher"] = r["peak_memory_bytes"] / h["peak_memory_bytes"]
            if Path(r.get("dump", "")).is_file() and Path(h.get("dump", "")).is_file():
                r["rel_error_vs_higher"] = rel_error(torch.load(r["dump"]), torch.load(h["dump"]))


# ---------------------------------------------------------------------------- report
def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def main_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        if r["meta_every"] > 1:
            continue
        err = r.get("rel_error_vs_higher")
        backend = "plain KD" if r["mode"] == "none" else r["backend"]
        rows.append([r["depth"], backend + (", checkpointed teacher" if r["checkpointing"] else ""),
                     r["mode"], "–" if r["mode"] == "none" else r["pilot"],
                     f"{r['median_step_seconds']:.3f}", _x(r.get("time_vs_plain")), _x(r.get("time_vs_higher")),
                     fmt_bytes(r["peak_memory_bytes"]), _x(r.get("memory_vs_plain")), _x(r.get("memory_vs_higher")),
                     "–" if err is None else f"{err:.1e}"])
    cols = ["student layers", "backend", "meta-update", "pilot", "s/step (median)", "× plain KD", "× higher",
            "peak memory", "× plain KD", "× higher", "rel. error vs higher (agreement batch)"]
    return markdown_table(cols, rows)


def phase_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        if r["meta_every"] > 1:
            continue
        ph = r["phases_median_seconds"]
        label = "plain KD" if r["mode"] == "none" else f"{r['backend']} {r['mode']} {r['pilot']}"
        label += ", checkpointed teacher" if r["checkpointing"] else ""
        rows.append([r["depth"], label] + [f"{ph.get(p, 0.0):.3f}" for p in PHASES]
                    + [f"{r['median_step_seconds']:.3f}"])
    return markdown_table(["student layers", "configuration"] + [PHASE_LABELS[p] for p in PHASES] + ["step"], rows)


def every_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        if r["mode"] == "none" or r["checkpointing"]:
            continue
        if r["meta_every"] == 1 and not any(o["meta_every"] > 1 and o["backend"] == r["backend"]
                                            and o["mode"] == r["mode"] and o["pilot"] == r["pilot"]
                                            and o["depth"] == r["depth"] for o in results):
            continue
        plain = next(o for o in results if o["mode"] == "none" and o["depth"] == r["depth"])
        amortized = r["mean_step_seconds"]
        rows.append([r["depth"], f"{r['backend']} {r['mode']} {r['pilot']}", r["meta_every"], f"{amortized:.3f}",
                     _x(amortized / plain["median_step_seconds"]), fmt_bytes(r["peak_memory_bytes"])])
    return markdown_table(["student layers", "configuration", "meta_every", "s/step (mean over whole cycles)",
                           "× plain KD", "peak memory"], rows)


def find(results, **want) -> dict[str, Any] | None:
    for r in results:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def best_backend(results: list[dict[str, Any]], depth: int, mode: str = "lora", pilot: str = "reuse") -> str | None:
    """The fastest first-order backend (jvp or finite_diff) for ``mode``/``pilot`` at ``depth``."""
    cands = [r for r in results if r["depth"] == depth and r["mode"] == mode and r["pilot"] == pilot
             and r["backend"] in ("jvp", "finite_diff") and r["meta_every"] == 1 and not r["checkpointing"]]
    return min(cands, key=lambda r: r["median_step_seconds"])["backend"] if cands else None


def target_lines(results: list[dict[str, Any]], depths: tuple[int, ...]) -> list[str]:
    """The issue's targets, checked against what was measured (met / missed by how much)."""
    lines = []
    deep, shallow = max(depths), min(depths)

    def verdict(value: float, limit: float) -> str:
        return "met" if value <= limit else f"MISSED by {value / limit - 1:.0%}"

    for mode in MODES:
        for pilot in PILOTS:
            h = find(results, depth=deep, backend="higher", mode=mode, pilot=pilot, meta_every=1, checkpointing=False)
            cands = [r for r in results if r["depth"] == deep and r["mode"] == mode and r["pilot"] == pilot
                     and r["backend"] in ("jvp", "finite_diff") and r["meta_every"] == 1 and not r["checkpointing"]]
            if not h or not cands:
                continue
            b = min(cands, key=lambda r: r["median_step_seconds"])
            lines.append(f"{deep}-layer student, {mode} {pilot}: best backend {b['backend']} takes "
                         f"{b['time_vs_higher']:.2f}× the time of higher (target ≤ 0.65×: "
                         f"{verdict(b['time_vs_higher'], 0.65)}) and {b.get('memory_vs_higher', float('nan')):.2f}× "
                         f"its peak memory (target ≤ 0.70×: {verdict(b.get('memory_vs_higher', 9), 0.70)})")
    first_order = [r for r in results if r["depth"] == shallow and r["backend"] in ("jvp", "finite_diff")
                   and r.get("time_vs_higher") and r["meta_every"] == 1 and not r["checkpointing"]]
    if first_order:
        worst = max(first_order, key=lambda r: r["time_vs_higher"])
        ratios = [r["time_vs_higher"] for r in first_order]
        lines.append(f"{shallow}-layer student: jvp and finite_diff take {min(ratios):.2f}–{max(ratios):.2f}× the time "
                     f"of higher with the same mode and pilot (target never slower: "
                     f"{verdict(max(ratios), 1.0)}{'' if max(ratios) <= 1 else ', worst ' + worst['label']})")
    best = best_backend(results, shallow)
    if best:
        r1 = find(results, depth=shallow, backend=best, mode="lora", pilot="reuse", meta_every=1, checkpointing=False)
        lines.append(f"{shallow}-layer student, LoRA reuse with {best}: {r1['time_vs_plain']:.2f}× plain KD "
                     f"(target ≤ 2.3×: {verdict(r1['time_vs_plain'], 2.3)})")
        r4 = find(results, depth=shallow, backend=best, mode="lora", pilot="reuse", meta_every=4)
        if r4:
            plain = find(results, depth=shallow, mode="none")
            ratio = r4["mean_step_seconds"] / plain["median_step_seconds"]
            lines.append(f"{shallow}-layer student, LoRA reuse with {best}, meta_every=4: {ratio:.2f}× plain KD "
                         f"amortized (target ≤ 1.4×: {verdict(ratio, 1.4)})")
    return lines


def plot(results: list[dict[str, Any]], depths: tuple[int, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(depths), 2, figsize=(13, 3.8 * len(depths)), squeeze=False)
    colors = {"plain KD": "#888888", "higher": "#e76f51", "jvp": "#2a9d8f", "finite_diff": "#264653"}
    for row, depth in zip(axes, depths):
        rs = [r for r in results if r["depth"] == depth and r["meta_every"] == 1 and not r["checkpointing"]]
        labels = ["plain KD" if r["mode"] == "none" else f"{r['backend']}\n{r['mode']} {r['pilot']}" for r in rs]
        cs = [colors["plain KD" if r["mode"] == "none" else r["backend"]] for r in rs]
        row[0].bar(labels, [r["median_step_seconds"] for r in rs], color=cs)
        row[0].set_title(f"{depth}-layer student: seconds per step (median)")
        row[1].bar(labels, [(r["peak_memory_bytes"] or 0) / 2**20 for r in rs], color=cs)
        row[1].set_title(f"{depth}-layer student: peak memory (MiB)")
        for ax in row:
            ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(payload: dict[str, Any], out: str | Path) -> None:
    """Tables, target checks and notes from the measured results; print them and write the files."""
    results, s = payload["results"], payload["settings"]
    depths = tuple(s["depths"])
    payload["targets"] = targets = target_lines(results, depths)
    teacher = ("tiny random BERT (4 layers, width 32)" if payload["quick"]
               else "pretrained MiniLM-L6-H384 (22.7M parameters; LoRA r=8 on query/value)")
    notes = targets + [
        f"teacher: {teacher}; student: the teacher's first N blocks (same width); batch {s['batch_size']} × "
        f"{s['seq_len']} tokens; {s['steps']} measured steps per configuration after {s['warmup']} warm-up steps "
        "(meta_every runs: whole cycles), median",
        "higher and jvp run the student with eager attention (no double backward / forward derivative in fused "
        "SDPA kernels); plain KD and finite_diff keep the model's default attention",
        "peak memory: " + (results[0]["memory_source"] if results else "n/a") +
        ", one process per configuration (on CPU the lifetime peak RSS, which includes loading the models)",
        "phases: median seconds per step; 'teacher fwd' includes restore's second (no-grad) teacher forward",
        "rel. error vs higher: max |Δ∇φ| / max |∇φ_higher| of the meta-gradient on one agreement batch, the "
        "same in every row (float32)",
    ]
    body = "\n\n".join([main_table(results), "### Time by phase (seconds per step)", phase_table(results),
                         "### Meta-step every k steps", every_table(results)])
    paths = write_results(out, NAME, payload, body, notes)
    png = Path(out) / f"{NAME}.png"
    plot(results, depths, png)
    print_report(payload, body, notes, [paths["json"], paths["md"], png])
