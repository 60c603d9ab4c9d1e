"""The report of ``metakd bench scaling``: growth exponents, LoRA / full ratios and their crossings,
the table, notes and plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import fmt_bytes, markdown_table, print_report, write_results
from .scaling_model import (CROSSING, LORA_R, LORA_TARGETS, MARGIN, MARGIN_BYTES, NAME, crossing, describe_crossing,
                            fit_power_law, mode_color, mode_label, params_text)

METRICS = {"median_step_seconds": "s/step", "peak_memory_bytes": "peak memory",
           "peak_above_models_bytes": "peak above models", "grad_optimizer_bytes": "grad + optimizer bytes"}


def _ok(results: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    return sorted((r for r in results if r["mode"] == mode and r.get("status") == "ok"),
                  key=lambda r: r["teacher_params"])


def growth(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mode and metric, the least-squares exponent of cost vs teacher parameters (log-log)."""
    out: dict[str, dict[str, Any]] = {}
    for mode in dict.fromkeys(r["mode"] for r in results):
        rs = _ok(results, mode)
        out[mode] = {k: fit_power_law([r["teacher_params"] for r in rs], [r.get(k) or 0 for r in rs])
                     for k in METRICS}
    return out


def ratios_and_crossings(results: list[dict[str, Any]]) -> dict[str, Any]:
    """LoRA / full (and LoRA-NF4 / full) at every size where both ran, for the three memory figures, and
    where each ratio first drops to ``CROSSING``."""
    full = {r["size"]: r for r in _ok(results, "full")}
    out: dict[str, Any] = {}
    for mode in [k for k in dict.fromkeys(r["mode"] for r in results) if k not in ("none", "full")]:
        pairs = [(r, full[r["size"]]) for r in _ok(results, mode) if r["size"] in full]
        if not pairs:
            continue
        entry: dict[str, Any] = {}
        for key in ("peak_memory_bytes", "peak_above_models_bytes", "grad_optimizer_bytes"):
            pts = [(f["teacher_params"], r[key] / f[key]) for r, f in pairs if r.get(key) and f.get(key)]
            for (r, f) in pairs:
                if r.get(key) is not None and f.get(key):
                    r.setdefault("vs_full", {})[key] = r[key] / f[key]
            entry[key] = {"ratios": [{"teacher_params": x, "ratio": y} for x, y in pts],
                          "crossing": crossing([x for x, _ in pts], [y for _, y in pts])}
        out[mode] = entry
    return out


def build_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        params = r.get("teacher_params") or r["predicted_teacher_params"]
        head = [r["size"], params_text(params), mode_label(r["mode"])]
        if r.get("status") != "ok":
            why = r.get("reason") if r.get("status") == "skipped" else r.get("error", "")
            trainable = r["predicted_trainable_params"]
            rows.append(head + [params_text(trainable) if trainable else "0",
                                f"**{r.get('status')}**: {why}", "–", "–", "–", "–",
                                fmt_bytes(r["predicted_peak_bytes"]), "–"])
            continue
        ratio = (r.get("vs_full") or {}).get("peak_memory_bytes")
        energy = r.get("energy_joules_per_step")
        energy_s = "n/a" if energy is None else f"{energy:.1f} J" + (" (est.)" if r["energy_estimated"] else "")
        rows.append(head + [params_text(r["trainable_teacher_params"]) if r["trainable_teacher_params"] else "0",
                            f"{r['median_step_seconds']:.3f}", fmt_bytes(r["peak_memory_bytes"]),
                            fmt_bytes(r["peak_above_models_bytes"]), fmt_bytes(r["grad_optimizer_bytes"]),
                            energy_s, fmt_bytes(r["predicted_peak_bytes"]),
                            "–" if ratio is None else f"{ratio:.2f}×"])
    cols = ["size", "teacher params", "mode", "trainable teacher params", "s/step (median)", "peak memory",
            "peak above models", "teacher grad + AdamW bytes", "energy / step", "predicted peak",
            "peak memory vs full meta"]
    return markdown_table(cols, rows)


def growth_table(g: dict[str, dict[str, Any]]) -> str:
    rows = []
    for mode, fits in g.items():
        cells = []
        for key in METRICS:
            f = fits.get(key)
            cells.append("–" if f is None else f"{f['exponent']:.2f} ({f['points']} sizes)")
        rows.append([mode_label(mode)] + cells)
    return markdown_table(["mode"] + [f"exponent: {v}" for v in METRICS.values()], rows)


def crossing_lines(cross: dict[str, Any]) -> list[str]:
    names = {"peak_memory_bytes": "total peak memory", "peak_above_models_bytes": "peak above the loaded models",
             "grad_optimizer_bytes": "teacher grad + AdamW bytes"}
    lines = []
    for mode, entry in cross.items():
        for key, e in entry.items():
            ratios = ", ".join(f"{params_text(p['teacher_params'])}: {p['ratio']:.2f}" for p in e["ratios"])
            lines.append(f"{mode_label(mode)} / full meta, {names[key]}: first ≤ {CROSSING}× "
                         f"{describe_crossing(e['crossing'])} (ratios {ratios or 'n/a'})")
    return lines


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for mode in dict.fromkeys(r["mode"] for r in results):
        rs = _ok(results, mode)
        xs = [r["teacher_params"] for r in rs]
        kw = dict(color=mode_color(mode), marker="o", label=mode_label(mode))
        if rs:
            axes[0].plot(xs, [r["peak_memory_bytes"] / 2**30 for r in rs], **kw)
            axes[1].plot(xs, [r["median_step_seconds"] for r in rs], **kw)
        skipped = [r for r in results if r["mode"] == mode and r.get("status") == "skipped"]
        if skipped:
            axes[0].scatter([r["predicted_teacher_params"] for r in skipped],
                            [r["predicted_peak_bytes"] / 2**30 for r in skipped], facecolors="none",
                            edgecolors=mode_color(mode), marker="s", label=f"{mode_label(mode)}: predicted, skipped")
    axes[0].set_title("peak memory (GiB) vs teacher parameters")
    axes[1].set_title("seconds per step (median) vs teacher parameters")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("teacher parameters")
        ax.grid(True, which="both", alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(payload: dict[str, Any], out: str | Path, name: str = NAME) -> None:
    """The table, growth exponents, crossings and notes from the results; print them and write the files."""
    results, s = payload["results"], payload["settings"]
    g = payload["growth"] = growth(results)
    cross = payload["crossings"] = ratios_and_crossings(results)
    ok = [r for r in results if r.get("status") == "ok"]
    energy = next((r for r in ok if r.get("energy_source")), None)
    notes = crossing_lines(cross) + [
        f"teachers: randomly initialised Llama causal LMs (float32, eager attention, untied LM head) of the shapes "
        f"of real model families, vocabulary {s['vocab']}; student: the teacher's first and last blocks with its "
        f"embeddings and head; LoRA r={LORA_R} on {'/'.join(LORA_TARGETS)} (peft's Llama default); NF4: the "
        "blocks' Linear layers in 4-bit (bitsandbytes), embeddings, norms and head float32",
        f"teacher_layers: {', '.join(payload.get('teacher_layers') or ['all'])} (a value other than 'all': only those "
        "blocks learn, adapters or weights; the blocks below run once per meta-step without grad and are replayed); "
        f"meta_batch_size: {payload.get('meta_batch_size') or 'the whole batch'}",
        f"meta_grad={payload['meta_grad']}, pilot=restore, AdamW for student and teacher; batch {s['batch_size']} × "
        f"{s['seq_len']} random tokens (quiz batch the same size); median of {s['steps']} timed steps after "
        f"{s['warmup']} warm-up; device {payload['device']}, "
        f"{ok[0]['threads'] if ok else payload.get('threads')} torch thread(s) per configuration",
        "peak memory: " + (ok[0]["memory_source"] if ok else "n/a") + "; one process per configuration; "
        "'peak above models' subtracts the memory right after building the models (RSS, or CUDA allocated)",
        "teacher grad + AdamW bytes: measured from the tensors after the steps: φ's sizes (its gradients, freed "
        "after each step, have φ's shapes) plus the teacher optimizer's state tensors",
        f"predicted peak: a prediction, not a measurement (weights + grads + AdamW states + activations, × {MARGIN} "
        f"+ {fmt_bytes(MARGIN_BYTES)}); a configuration predicted above the memory available when it would start "
        "is skipped",
        "growth: least-squares slope of log(cost) vs log(teacher params) over the sizes measured (1.0 = linear)",
        "energy: " + ((energy["energy_source"] + (" (an estimate, not a measurement)" if energy["energy_estimated"]
                                                   else " (measured)")) if energy else "n/a"),
    ]
    lp = payload.get("ladder_predictions")
    if lp:
        fit = ", ".join(f"{mode_label(m)} {size or 'none of it'}"
                        + (f" ({params_text(lp['predicted_peak_bytes'][size]['teacher_params'])} params)"
                           if size else "")
                        for m, size in lp["largest_predicted_to_fit"].items())
        notes.append(f"predicted, not run: the largest ladder teacher whose predicted peak fits the "
                     f"{fmt_bytes(lp['available_bytes'])} available at the end: {fit}")
    if any(not r.get("finite", True) for r in ok):
        notes.append("NON-FINITE losses in: " + ", ".join(r["label"] for r in ok if not r["finite"]))
    payload["measured"] = {
        "median_step_seconds": "measured", "peak_memory_bytes": "measured", "peak_above_models_bytes": "measured",
        "grad_optimizer_bytes": "measured (tensor sizes)", "predicted_peak_bytes": "predicted",
        "energy_joules_per_step": "estimated" if any(r.get("energy_estimated") for r in ok) else "measured",
        "growth": "fitted", "crossings": "interpolated between measured sizes"}
    body = "\n\n".join([build_table(results), "### Growth with teacher size (log-log least-squares exponent)",
                        growth_table(g)])
    paths = write_results(out, name, payload, body, notes)
    png = Path(out) / f"{name}.png"
    plot(results, png)
    print_report(payload, body, notes, [paths["json"], paths["md"], png])
