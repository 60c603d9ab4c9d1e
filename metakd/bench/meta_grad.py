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
from .meta_grad_report import (add_ratios_and_agreement, best_backend, every_table, find, main_table, phase_table, plot,
                               rel_error, report, target_lines)
from .meta_grad_settings import BACKENDS, EVERY, FULL, MODES, NAME, PHASE_LABELS, PHASES, PILOTS, QUICK
from .report import fmt_bytes, run_worker, serve_worker, settings_from_args

# the settings (meta_grad_settings) and the report (meta_grad_report) have modules of their own; their names are
# this module's too. The worker (run_config and the _teacher it builds) stays here: the tests replace _teacher
__all__ = [
    "BACKENDS", "EVERY", "FULL", "MODES", "NAME", "PHASES", "PHASE_LABELS", "PILOTS", "QUICK",
    "add_ratios_and_agreement", "agreement_batches", "best_backend", "every_table", "find", "grid", "main",
    "main_table", "make_batches", "parse_args", "phase_table", "plot", "rel_error", "report", "run_config",
    "run_spec", "target_lines",
]


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


if __name__ == "__main__":
    sys.exit(main())
