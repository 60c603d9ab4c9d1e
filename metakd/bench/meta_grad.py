"""What each meta-gradient backend costs: higher vs jvp vs finite_diff, LoRA vs full teacher
meta-update, restore vs reuse, on 2- and 6-layer students, against plain KD on the same batches.
Prints tables and writes results/meta_grad_backends.{json,md,png}.

    metakd bench meta-grad [--quick] [--steps N] [--depths 2,6] [--device cpu|cuda] [--out results]

Every configuration runs in its own process (peak memory is per process). Before the steps, the
meta-gradient of an agreement batch (drawn on its own, so the same in every configuration whatever its
number of steps) is computed and compared with the ``higher`` backend's; timing is the median over the
measured steps after the warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import DistillConfig
from ..distiller import MetaDistiller
from ..telemetry import PhaseTimer, measure
from .report import (fmt_bytes, markdown_table, print_report, run_worker, serve_worker, settings_from_args,
                     write_results)

NAME = "meta_grad_backends"
BACKENDS = ("higher", "jvp", "finite_diff")
MODES = ("lora", "full")
PILOTS = ("restore", "reuse")
PHASES = ("teacher_forward", "pilot", "quiz", "directional_derivative", "teacher_backward", "teacher_step",
          "student_step")
PHASE_LABELS = {"teacher_forward": "teacher fwd", "pilot": "pilot", "quiz": "quiz",
                "directional_derivative": "dir. deriv.", "teacher_backward": "teacher bwd",
                "teacher_step": "teacher step", "student_step": "student step"}
EVERY = (2, 4)

FULL = dict(steps=5, warmup=2, batch_size=32, seq_len=64, depths=(2, 6))
QUICK = dict(steps=2, warmup=1, batch_size=8, seq_len=16, depths=(1, 2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metakd bench meta-grad", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny random teacher and students, short batches (a smoke test, about a minute)")
    p.add_argument("--steps", type=int, help="measured steps per configuration (after the warm-up steps)")
    p.add_argument("--warmup", type=int, help="unmeasured steps first (the allocator and caches settle)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="tokens per example (every batch is padded to this length)")
    p.add_argument("--depths", help="comma-separated student depths (blocks)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="subset of higher,jvp,finite_diff")
    p.add_argument("--modes", default=",".join(MODES), help="teacher meta-update: subset of lora,full")
    p.add_argument("--pilots", default=",".join(PILOTS), help="real student step: subset of restore,reuse")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results", help="directory for the result files")
    p.add_argument("--render", metavar="JSON", help="measure nothing: rebuild the tables and files from a "
                                                   "meta_grad_backends.json written earlier")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    s = settings_from_args(p, args, QUICK if args.quick else FULL, ("steps", "warmup", "batch_size", "seq_len"),
                           minimum={"warmup": 0})
    if args.depths:
        try:
            s["depths"] = tuple(int(d) for d in args.depths.split(",") if d.strip())
        except ValueError:
            p.error(f"--depths takes comma-separated integers, got {args.depths!r}")
        if not s["depths"] or min(s["depths"]) < 1:
            p.error("--depths must be positive integers")
    for flag, allowed in (("backends", BACKENDS), ("modes", MODES), ("pilots", PILOTS)):
        chosen = [b.strip() for b in getattr(args, flag).split(",") if b.strip()]
        if not chosen or any(b not in allowed for b in chosen):
            p.error(f"--{flag} takes a subset of {','.join(allowed)}; got {getattr(args, flag)!r}")
        setattr(args, f"{flag[:-1]}_list", chosen)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    args.settings = s
    return args


# ---------------------------------------------------------------------------- models and batches
def _teacher(quick: bool):
    """The pretrained MiniLM-L6 (LoRA on query/value in lora mode), or a tiny random BERT."""
    if quick:
        from ..models import tiny_classifier

        return tiny_classifier("bert", vocab_size=512, hidden_size=32, num_layers=4, num_heads=4, max_positions=64,
                               seed=0), None
    from ..models import embedded_teacher_path, load_classifier

    model, tokenizer = load_classifier(embedded_teacher_path(), 2)
    return model, tokenizer


def make_batches(n: int, batch_size: int, seq_len: int, tokenizer, vocab_size: int, seed: int) -> list[dict]:
    """``n`` batches of ``batch_size`` examples padded to exactly ``seq_len`` tokens: sentences of the
    embedded sentiment task when a tokenizer is given, random ids otherwise (quick mode)."""
    g = torch.Generator().manual_seed(seed)
    if tokenizer is None:
        return [{"input_ids": torch.randint(1, vocab_size, (batch_size, seq_len), generator=g),
                 "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
                 "labels": torch.randint(0, 2, (batch_size,), generator=g)} for _ in range(n)]
    from ..synthetic import generate_sentiment

    rows = generate_sentiment(n * batch_size, seed=seed)
    batches = []
    for i in range(n):
        chunk = rows[i * batch_size:(i + 1) * batch_size]
        enc = tokenizer([t for t, _ in chunk], padding="max_length", truncation=True, max_length=seq_len,
                        return_tensors="pt")
        batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        batch["labels"] = torch.tensor([y for _, y in chunk])
        batches.append(batch)
    return batches


def agreement_batches(batch_size: int, seq_len: int, tokenizer, vocab_size: int, seed: int) -> tuple[dict, dict]:
    """The (batch, quiz batch) whose meta-gradient every configuration compares with ``higher``'s: one
    batch each from ``make_batches(1, ...)``, so it is the same whatever a configuration's number of steps."""
    return (make_batches(1, batch_size, seq_len, tokenizer, vocab_size, seed)[0],
            make_batches(1, batch_size, seq_len, tokenizer, vocab_size, seed + 1)[0])


def _rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------- one configuration (worker)
def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """Build teacher and student, run the measured steps of one configuration; own process."""
    from ..models import student_from_teacher

    torch.manual_seed(spec["seed"])
    device = torch.device(spec["device"])
    teacher, tokenizer = _teacher(spec["quick"])
    student = student_from_teacher(teacher, list(range(spec["depth"])))
    cfg = DistillConfig(**spec["distill"])
    timer = PhaseTimer(device)
    d = MetaDistiller(teacher, student, cfg, device=device, timer=timer)
    n = spec["warmup"] + spec["steps"]
    vocab = getattr(teacher.config, "vocab_size", 512)
    batches = make_batches(n, spec["batch_size"], spec["seq_len"], tokenizer, vocab, spec["seed"])
    quizzes = make_batches(n, spec["batch_size"], spec["seq_len"], tokenizer, vocab, spec["seed"] + 1)
    baseline_rss = _rss_bytes()

    with measure(device) as m:
        agreement = None
        if cfg.meta_update != "none":
            # The agreement check's meta-gradient (also the warm-up of every meta phase), on a batch and quiz
            # drawn on their own: make_batches' sentences depend on how many batches are drawn, and meta_every
            # rows draw more, so batches[0] would differ between the rows compared.
            first = d.meta_gradient(*agreement_batches(spec["batch_size"], spec["seq_len"], tokenizer, vocab,
                                                       spec["seed"]))
            flat = torch.cat([g.detach().reshape(-1).float().cpu() for g in first.phi_grads])
            torch.save(flat, spec["dump"])
            agreement = {"inner_loss": first.inner_loss, "quiz_loss": first.quiz_loss,
                         "grad_norm": float(flat.norm())}
            del first, flat
        history = [d.step(b, q) for b, q in zip(batches, quizzes)]
    measured = history[spec["warmup"]:]
    secs = [h["seconds"] for h in measured]
    phases = {p: statistics.median(h.get(f"time_{p}", 0.0) for h in measured) for p in PHASES}
    meta_secs = [h["seconds"] for h in measured if h["meta"]]
    return {
        **{k: spec[k] for k in ("label", "depth", "backend", "mode", "pilot", "meta_every", "checkpointing")},
        "attention": getattr(getattr(d.student, "config", None), "_attn_implementation", None),
        "trainable_teacher_params": d.trainable_teacher_parameters(),
        "student_params": sum(p.numel() for p in d.student.parameters()),
        "median_step_seconds": statistics.median(secs),
        "mean_step_seconds": statistics.fmean(secs),
        "median_meta_step_seconds": statistics.median(meta_secs) if meta_secs else None,
        "step_seconds": secs,
        "phases_median_seconds": phases,
        "peak_memory_bytes": m.peak_memory_bytes,
        "memory_source": m.memory_source,
        "baseline_rss_bytes": baseline_rss,
        "first_batch": agreement,
    }


# ---------------------------------------------------------------------------- the grid
def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    s = args.settings
    specs = []
    for depth in s["depths"]:
        specs.append(dict(depth=depth, backend=None, mode="none", pilot="restore"))
        for backend in args.backend_list:
            for mode in args.mode_list:
                for pilot in args.pilot_list:
                    specs.append(dict(depth=depth, backend=backend, mode=mode, pilot=pilot))
    return specs


def _distill(args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    s = args.settings
    cfg = DistillConfig(meta_update=spec["mode"], meta_grad=spec["backend"] or "higher", pilot=spec["pilot"],
                        meta_every=spec.get("meta_every", 1), teacher_checkpointing=spec.get("checkpointing", False),
                        batch_size=s["batch_size"], student_lr=5e-4, teacher_lr=2e-5, pilot_lr=1e-2,
                        lora_target_modules=["query", "value"], seed=args.seed, progress=False)
    return cfg.to_dict()


def _label(spec: dict[str, Any]) -> str:
    if spec["mode"] == "none":
        return f"depth {spec['depth']}: plain KD"
    extra = f", meta_every={spec['meta_every']}" if spec.get("meta_every", 1) > 1 else ""
    extra += ", checkpointed teacher" if spec.get("checkpointing") else ""
    return f"depth {spec['depth']}: {spec['backend']} {spec['mode']} {spec['pilot']}{extra}"


def run_spec(args: argparse.Namespace, spec: dict[str, Any], tmp: Path, index: int, total: int) -> dict[str, Any]:
    s = args.settings
    spec = {"meta_every": 1, "checkpointing": False, **spec}
    spec.update(label=_label(spec), seed=args.seed, quick=args.quick, device=args.device, steps=s["steps"],
                warmup=s["warmup"], batch_size=s["batch_size"], seq_len=s["seq_len"], distill=_distill(args, spec),
                dump=str(tmp / f"grad-{index}.pt"))
    if spec["meta_every"] > 1:  # whole cycles of meta_every steps, after the warm-up
        spec["steps"] = max(spec["steps"], 2 * spec["meta_every"])
        spec["steps"] -= spec["steps"] % spec["meta_every"]
    print(f"[{index}/{total}] {spec['label']}", file=sys.stderr, flush=True)
    result = run_worker(__name__, spec)
    result["dump"] = spec["dump"]
    print(f"    {result['median_step_seconds']:.3f} s/step (median), peak memory {fmt_bytes(result['peak_memory_bytes'])}",
          file=sys.stderr, flush=True)
    return result


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, run_config)
    if args.render:
        report(json.loads(Path(args.render).read_text()), args.out)
        return 0
    s = args.settings
    specs = grid(args)
    shallow, deep = min(s["depths"]), max(s["depths"])
    total = len(specs) + len(EVERY) + 1
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="metakd-meta-grad-") as tmp:
        for i, spec in enumerate(specs, 1):
            results.append(run_spec(args, spec, Path(tmp), i, total))
        # meta_every and teacher checkpointing for the best first-order backend (LoRA; reuse if measured)
        mode = "lora" if "lora" in args.mode_list else args.mode_list[0]
        pilot = "reuse" if "reuse" in args.pilot_list else args.pilot_list[0]
        best = best_backend(results, shallow, mode, pilot) or args.backend_list[-1]
        extra = [dict(depth=shallow, backend=best, mode=mode, pilot=pilot, meta_every=k) for k in EVERY]
        best_deep = best_backend(results, deep, mode, pilot) or args.backend_list[-1]
        extra.append(dict(depth=deep, backend=best_deep, mode=mode, pilot=pilot, checkpointing=True))
        for j, spec in enumerate(extra, len(specs) + 1):
            results.append(run_spec(args, spec, Path(tmp), j, total))
        add_ratios_and_agreement(results)
    for r in results:
        r.pop("dump", None)

    payload = {"benchmark": NAME, "quick": args.quick, "settings": {**s, "depths": list(s["depths"])},
               "device": args.device, "seed": args.seed, "results": results}
    report(payload, args.out)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
