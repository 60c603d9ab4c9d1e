"""What a meta-step costs against plain KD with the cheaper levers: teacher_layers (LoRA/full, all
blocks vs the top k), meta_every, meta_batch_size and the one-sided finite difference, on the
same batches, interleaved step by step in one process. Prints tables and writes
results/meta_step_cost.{json,md}.

    metakd bench meta-step-cost [--quick] [--rounds N] [--teacher-layers all,top:2] [--meta-batch-size M]
                                [--quiz-batch-size Q] [--backend jvp] [--out results]

Every configuration gets its own distiller built from the same teacher and student weights; each
round runs one step of every configuration (in an order rotated every round) on the round's batch,
so load from other processes hits all of them alike. Ratios to plain KD are medians of the per-round
ratios, with their min–max spread. Plain KD runs with SDPA and with eager attention; the faster
(by median) is the denominator. Memory: "peak above the loaded models" is the peak RSS of a step
(VmHWM, reset before it) minus the RSS right before it, after returning freed memory to the OS
(malloc_trim), per configuration; the largest over the measured rounds.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import DistillConfig
from ..distiller import MetaDistiller
from ..models import find_layer_list, student_from_teacher, use_eager_attention
from ..telemetry import PhaseTimer, fmt_bytes
from ..trunk import first_rows
from .meta_grad import PHASE_LABELS, PHASES, _teacher, make_batches
from .report import markdown_table, parse_meta_cost_args, print_report, settings_from_args, write_results

NAME = "meta_step_cost"
FULL = dict(rounds=8, warmup=1, batch_size=32, seq_len=64)
QUICK = dict(rounds=4, warmup=1, batch_size=8, seq_len=16)
EVERY = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metakd bench meta-step-cost", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random teacher, short batches (a smoke test)")
    p.add_argument("--rounds", type=int, help=f"measured rounds (a multiple of {EVERY}: whole meta_every cycles)")
    p.add_argument("--warmup", type=int, help="unmeasured rounds first")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--teacher-layers", default="all,top:2", help="teacher_layers values compared (default: %(default)s)")
    p.add_argument("--meta-batch-size", type=int, help="also run LoRA with the first layers value and this meta_batch_size")
    p.add_argument("--quiz-batch-size", type=int, help="also run LoRA with the first layers value and quiz batches "
                                                     "of this many rows (the first ones of each quiz batch)")
    p.add_argument("--only", help="comma-separated label substrings: run plain KD and only the configurations "
                                   "whose label contains one of them (e.g. 'quiz batch')")
    p.add_argument("--backend", default="jvp", choices=("higher", "jvp", "finite_diff"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=NAME)
    p.add_argument("--out", default="results")
    args = p.parse_args(argv)
    s = settings_from_args(p, args, QUICK if args.quick else FULL, ("rounds", "warmup", "batch_size", "seq_len"),
                           minimum={"warmup": 0})
    if s["rounds"] % EVERY:
        p.error(f"--rounds must be a multiple of {EVERY} (whole meta_every={EVERY} cycles), got {s['rounds']}")
    parse_meta_cost_args(p, args, s["batch_size"])
    if args.quiz_batch_size is not None and not 1 <= args.quiz_batch_size <= s["batch_size"]:
        p.error(f"--quiz-batch-size must be between 1 and the batch size {s['batch_size']}")
    args.settings = s
    return args


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """(label, DistillConfig settings, attention) of every configuration compared."""
    out = [dict(label="plain KD (SDPA)", mode="none", eager=False), dict(label="plain KD (eager)", mode="none", eager=True)]
    for mode in ("lora", "full"):
        for layers in args.layers_list:
            out.append(dict(label=f"{mode} {layers} reuse", mode=mode, layers=layers, pilot="reuse"))
    top = next((x for x in args.layers_list if x != "all"), args.layers_list[0])
    out.append(dict(label=f"lora {top} restore", mode="lora", layers=top, pilot="restore"))
    out.append(dict(label=f"lora {top} reuse, meta_every={EVERY}", mode="lora", layers=top, pilot="reuse", every=EVERY))
    out.append(dict(label=f"lora all reuse, meta_every={EVERY}", mode="lora", layers="all", pilot="reuse", every=EVERY))
    if args.meta_batch_size:
        out.append(dict(label=f"lora {top} restore, meta_batch_size={args.meta_batch_size}", mode="lora", layers=top,
                        pilot="restore", meta_batch=args.meta_batch_size))
    if args.quiz_batch_size:
        out.append(dict(label=f"lora {top} reuse, quiz batch {args.quiz_batch_size}", mode="lora", layers=top,
                        pilot="reuse", quiz_rows=args.quiz_batch_size))
    if args.quiz_batch_size and args.meta_batch_size:
        for every in (1, EVERY):
            out.append(dict(label=f"lora {top} restore, meta_batch_size={args.meta_batch_size}, quiz batch "
                                  f"{args.quiz_batch_size}" + (f", meta_every={every}" if every > 1 else ""),
                            mode="lora", layers=top, pilot="restore", meta_batch=args.meta_batch_size,
                            quiz_rows=args.quiz_batch_size, every=every))
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        out = [c for c in out if c["mode"] == "none" or any(w in c["label"] for w in wanted)]
    return out


def _load() -> float | None:
    """The 1-minute load average (other processes on the machine), None where unknown."""
    import os

    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _rss() -> int:
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _build(conf: dict[str, Any], teacher, student, args: argparse.Namespace) -> MetaDistiller:
    s = args.settings
    teacher, student = copy.deepcopy(teacher), copy.deepcopy(student)
    if conf.get("eager"):
        use_eager_attention(teacher)
        use_eager_attention(student)
    cfg = DistillConfig(meta_update=conf["mode"], meta_grad=args.backend, pilot=conf.get("pilot", "restore"),
                        teacher_layers=conf.get("layers", "all") if conf["mode"] != "none" else "all",
                        meta_every=conf.get("every", 1), meta_batch_size=conf.get("meta_batch"),
                        batch_size=s["batch_size"], student_lr=5e-4, teacher_lr=2e-5, pilot_lr=1e-2,
                        lora_target_modules=["query", "value"], seed=args.seed, progress=False)
    return MetaDistiller(teacher, student, cfg, timer=PhaseTimer("cpu", memory=True))


def fd_errors(teacher, student, args: argparse.Namespace, batch, quiz) -> dict[str, float]:
    """Relative error (max |Δ| / max |exact|) of finite_diff central and forward against jvp, LoRA with
    the first non-'all' teacher_layers value, on the first batch."""
    top = next((x for x in args.layers_list if x != "all"), args.layers_list[0])
    grads = {}
    for name, backend, scheme in (("jvp", "jvp", "central"), ("central", "finite_diff", "central"),
                                  ("forward", "finite_diff", "forward")):
        cfg = DistillConfig(meta_update="lora", meta_grad=backend, fd_scheme=scheme, teacher_layers=top,
                            batch_size=args.settings["batch_size"], pilot_lr=1e-2,
                            lora_target_modules=["query", "value"], seed=args.seed, progress=False)
        d = MetaDistiller(copy.deepcopy(teacher), copy.deepcopy(student), cfg)
        with torch.no_grad():  # peft starts lora_B at zero; move it so every adapter gets a gradient
            g = torch.Generator().manual_seed(5)
            for n, p in d.teacher.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.01 * torch.randn(p.shape, generator=g))
        torch.manual_seed(args.seed)
        grads[name] = d.meta_gradient(batch, quiz).phi_grads
    want = grads["jvp"]
    scale = max(float(w.abs().max()) for w in want)
    return {k: max(float((a - b).abs().max()) for a, b in zip(grads[k], want)) / scale for k in ("central", "forward")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = args.settings
    torch.manual_seed(args.seed)
    teacher, tokenizer = _teacher(args.quick)
    student = student_from_teacher(teacher, [0, len(find_layer_list(teacher)[1]) - 1])
    n = s["warmup"] + s["rounds"]
    vocab = getattr(teacher.config, "vocab_size", 512)
    batches = make_batches(n, s["batch_size"], s["seq_len"], tokenizer, vocab, args.seed)
    quizzes = make_batches(n, s["batch_size"], s["seq_len"], tokenizer, vocab, args.seed + 1)
    confs = configurations(args)
    print(f"building {len(confs)} distillers", file=sys.stderr, flush=True)
    ds = [_build(c, teacher, student, args) for c in confs]
    rows: list[list[dict[str, Any]]] = [[] for _ in confs]
    load_start = _load()
    start = time.perf_counter()
    for r in range(n):
        order = [(i + r) % len(confs) for i in range(len(confs))]
        for i in order:
            _trim()
            before = _rss()
            m = ds[i].step(batches[r], first_rows(quizzes[r], confs[i].get("quiz_rows")))
            m["rss_before"] = before
            rows[i].append(m)
        print(f"round {r + 1}/{n} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    errors = fd_errors(teacher, student, args, batches[0], quizzes[0])
    results = summarize(confs, rows, s["warmup"])
    payload = {"benchmark": args.name, "quick": args.quick, "settings": s, "backend": args.backend, "seed": args.seed,
               "teacher_layers": args.layers_list, "meta_batch_size": args.meta_batch_size,
               "fd_rel_error_vs_jvp": errors, "results": results, "total_seconds": time.perf_counter() - start,
               "load_average": {"start": load_start, "end": _load()}}
    report(payload, args.out)
    return 0


def summarize(confs: list[dict[str, Any]], rows: list[list[dict[str, Any]]], warmup: int) -> list[dict[str, Any]]:
    measured = [r[warmup:] for r in rows]
    medians = [statistics.median(m["seconds"] for m in ms) for ms in measured]
    plain = [i for i, c in enumerate(confs) if c["mode"] == "none"]
    base = min(plain, key=lambda i: medians[i])
    out = []
    for c, ms, med in zip(confs, measured, medians):
        ratios = [m["seconds"] / b["seconds"] for m, b in zip(ms, measured[base])]
        above = [max((v for k, v in m.items() if k.startswith("mem_")), default=0.0) - m["rss_before"] for m in ms]
        phases = {p: statistics.fmean(m.get(f"time_{p}", 0.0) for m in ms) for p in PHASES}
        out.append({**c, "median_step_seconds": med, "mean_step_seconds": statistics.fmean(m["seconds"] for m in ms),
                    "step_seconds": [m["seconds"] for m in ms], "time_vs_plain": statistics.median(ratios),
                    "time_vs_plain_min": min(ratios), "time_vs_plain_max": max(ratios),
                    "amortized_vs_plain": statistics.fmean(m["seconds"] for m in ms)
                    / statistics.fmean(b["seconds"] for b in measured[base]),
                    "peak_rss_bytes": max(max((v for k, v in m.items() if k.startswith("mem_")), default=0) for m in ms),
                    "peak_above_models_bytes": max(above), "phases_mean_seconds": phases,
                    "denominator": confs[base]["label"]})
    return out


def report(payload: dict[str, Any], out: str | Path) -> None:
    results = payload["results"]
    rows = [[r["label"], f"{r['median_step_seconds']:.3f}",
             f"{r['time_vs_plain']:.2f}× ({r['time_vs_plain_min']:.2f}–{r['time_vs_plain_max']:.2f})",
             f"{r['amortized_vs_plain']:.2f}×", fmt_bytes(r["peak_rss_bytes"]), fmt_bytes(r["peak_above_models_bytes"])]
            for r in results]
    main_t = markdown_table(["configuration", "s/step (median)", "× plain KD (median of per-round ratios, min–max)",
                             "× plain KD (mean s/step, amortized)", "peak RSS", "peak above the loaded models"], rows)
    prow = [[r["label"]] + [f"{r['phases_mean_seconds'][p]:.3f}" for p in PHASES] for r in results]
    phase_t = markdown_table(["configuration"] + [PHASE_LABELS[p] for p in PHASES], prow)
    by = {r["label"]: r for r in results}
    notes = targets(by, payload)
    s = payload["settings"]
    errs = payload.get("fd_rel_error_vs_jvp") or {}
    if errs:
        notes.append(f"finite_diff against jvp (LoRA, first batch, float32): central {errs['central']:.2e}, "
                     f"forward {errs['forward']:.2e} relative (max |Δ| / max |exact|)")
    notes += [
        f"denominator of every ratio: {results[0]['denominator']} (the faster plain KD by median)",
        f"{'a tiny random 4-block BERT (--quick)' if payload['quick'] else 'MiniLM-L6'} teacher (LoRA r=8 on "
        f"query/value), 2-block student (teacher blocks 0 and 5), batch "
        f"{s['batch_size']} × {s['seq_len']}, meta_grad={payload['backend']}; {s['rounds']} measured rounds after "
        f"{s['warmup']} warm-up; every round runs one step of each configuration, order rotated",
        "teacher_layers other than 'all': only those blocks learn (adapters in lora, weights in full); embeddings "
        "and head learn in neither; the blocks below run once per meta-step without grad and are replayed",
        "the machine is shared with other jobs: absolute times are noisy; the ratios pair steps of the same round"
        + (f" (1-minute load average {la['start']:.1f} at the start, {la['end']:.1f} at the end, on "
           f"{os.cpu_count()} cores)" if (la := payload.get("load_average") or {}).get("start") is not None
           and la.get("end") is not None else ""),
        "per-phase: mean seconds per step over the measured rounds (a phase a step skips counts 0)",
    ]
    body = "\n\n".join([main_t, "Per phase (mean s/step):", phase_t])
    paths = write_results(out, payload["benchmark"], payload, body, notes)
    print_report(payload, body, notes, [paths["json"], paths["md"]])


def targets(by: dict[str, dict[str, Any]], payload: dict[str, Any]) -> list[str]:
    """The issue's targets, each met or missed by how much (only those whose rows were run)."""
    layers = [x for x in payload["teacher_layers"] if x != "all"]
    if not layers:
        return []
    top = layers[0]
    lines = []

    def check(name: str, value: float, limit: float) -> None:
        verdict = "met" if value <= limit else f"MISSED by {value / limit:.2f}×"
        lines.append(f"target {name} ≤ {limit}×: {value:.2f}× — {verdict}")

    r = by.get(f"lora {top} reuse")
    if r:
        check(f"LoRA {top} reuse, every step, time vs plain KD", r["time_vs_plain"], 1.8)
    full = by.get("full all reuse")
    if r and full:
        paired = statistics.median(a / b for a, b in zip(r["step_seconds"], full["step_seconds"]))
        check(f"LoRA {top} vs full-all time (median of per-round ratios)", paired, 0.5)
        check(f"LoRA {top} vs full-all peak above the loaded models",
              r["peak_above_models_bytes"] / full["peak_above_models_bytes"], 0.6)
    every = by.get(f"lora {top} reuse, meta_every={EVERY}")
    if every:
        check(f"LoRA {top} meta_every={EVERY}, amortized time vs plain KD", every["amortized_vs_plain"], 1.1)
    return lines


if __name__ == "__main__":
    sys.exit(main())
