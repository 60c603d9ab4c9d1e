"""The GPU suite's report: ratios per size, the issue's targets at 8B, tables and plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..telemetry import fmt_bytes
from .gpu_model import MODE_LABELS, TARGETS
from .report import markdown_table


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: LoRA/full (time, peak memory, energy) and meta/KD (LoRA step time over plain KD's)."""
    by = {(r["size"], r["mode"]): r for r in rows if "skipped" not in r}
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        kd, lora, full = by.get((size, "none")), by.get((size, "lora")), by.get((size, "full"))

        def ratio(a, b, key):
            return a[key] / b[key] if a and b and a.get(key) and b.get(key) else None
        out.append({"size": size, "lora_full_time": ratio(lora, full, "s_per_step"),
                    "lora_full_memory": ratio(lora, full, "peak_bytes"),
                    "lora_full_energy": ratio(lora, full, "energy_per_step"),
                    "meta_kd_time": ratio(lora, kd, "s_per_step"),
                    "full_skipped": next((r.get("skipped") for r in rows if r["size"] == size and r["mode"] == "full"
                                          and "skipped" in r), None)})
    return out


def target_notes(rat: list[dict[str, Any]]) -> list[str]:
    """The issue's targets at the 8B shape, met or missed by how much (only where 8B ran)."""
    row = next((r for r in rat if r["size"] == "8b"), None)
    if row is None:
        return []
    notes = []
    checks = (("lora_full_memory", "memory", "LoRA peak memory / full's"),
              ("lora_full_energy", "energy", "LoRA energy per step / full's"),
              ("meta_kd_time", "meta_vs_kd", "LoRA meta-step time / plain KD's"))
    for key, target, what in checks:
        value = row[key]
        if value is None:
            why = f"full meta-update {row['full_skipped']}" if row["full_skipped"] and key != "meta_kd_time" else \
                "not measured"
            notes.append(f"8B target {what} <= {TARGETS[target]}: {why}")
        else:
            verdict = "met" if value <= TARGETS[target] else f"missed by {value / TARGETS[target]:.2f}x"
            notes.append(f"8B target {what} <= {TARGETS[target]}: {value:.3f}, {verdict}")
    return notes


# ---------------------------------------------------------------------------- report
def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def tables(check: list[dict[str, Any]], rows: list[dict[str, Any]], rat: list[dict[str, Any]]) -> str:
    t1 = markdown_table(["backend", "check", "attention", "rel. error vs CPU", "tolerance", "ok"],
                        [[c["backend"], c["check"], c["attention"], f"{c['rel_err']:.2e}", f"{c['tol']:.0e}",
                          "yes" if c["ok"] else "NO"] for c in check])
    body = []
    for r in rows:
        if "skipped" in r:
            body.append([r["size"], MODE_LABELS[r["mode"]], r["skipped"], "", "", "",
                         fmt_bytes(r.get("predicted_bytes")), ""])
            continue
        lo, hi = r["spread"]
        phases = ", ".join(f"{p} {v:.3f}" for p, v in r["phases"].items() if v)
        body.append([r["size"], MODE_LABELS[r["mode"]], f"{r['s_per_step']:.3f}", f"{lo:.3f}-{hi:.3f}",
                     fmt_bytes(r["peak_bytes"]), _fmt(r["energy_per_step"], ".1f"), fmt_bytes(r["predicted_bytes"]),
                     phases])
    t2 = markdown_table(["teacher", "mode", "s/step", "spread (round medians)", "peak memory", "J/step",
                         "predicted", "phases (s)"], body)
    t3 = markdown_table(["teacher", "LoRA/full time", "LoRA/full memory", "LoRA/full energy", "meta/KD time"],
                        [[r["size"], _fmt(r["lora_full_time"]), _fmt(r["lora_full_memory"]),
                          _fmt(r["lora_full_energy"]), _fmt(r["meta_kd_time"])] for r in rat])
    return "\n\n".join(["Correctness on the device", t1, "LLM shapes", t2, "Ratios", t3])


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    done = [r for r in rows if "skipped" not in r]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['size']}\n{MODE_LABELS[r['mode']]}" for r in done]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, len(done) * 1.1), 4))
    axes[0].bar(labels, [r["s_per_step"] for r in done])
    axes[0].set_ylabel("seconds per step")
    axes[1].bar(labels, [r["peak_bytes"] / 2 ** 30 for r in done])
    axes[1].set_ylabel("peak memory (GiB)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
