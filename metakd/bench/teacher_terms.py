"""What the anchored terms of the teacher's objective add to a LoRA meta-step: the quiz loss only
against the same step with teacher_ce_weight=1, teacher_student_weight=1, teacher_anchor_weight=1
(one more no-grad teacher forward: the initial teacher's logits) and all three, interleaved round by
round in one process. Prints a table and writes results/teacher_terms.{json,md}.

    metakd bench teacher-terms [--quick] [--rounds N] [--warmup N] [--batch-size B] [--seq-len L]
                               [--backend jvp] [--pilot reuse] [--teacher-layers all] [--threads N]
                               [--name teacher_terms] [--out results]

Every configuration gets its own distiller built from the same teacher and student weights; each
round runs one meta-step of every configuration (in an order rotated every round) on the round's
batch and quiz batch, so load from other processes hits all of them alike. The ratio to the quiz-loss
step is taken per round, of the wall time and of the process's CPU time (which other processes'
load barely moves: with one torch thread it is the step's own work); the table gives each ratio's
median, interquartile range and min–max, and the target "≤ 1.10×" is read on the medians.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import DistillConfig, check_teacher_layers
from ..distiller import MetaDistiller
from ..models import find_layer_list, student_from_teacher
from ..telemetry import PhaseTimer
from .meta_grad import _teacher, make_batches
from .report import markdown_table, print_report, settings_from_args, write_results

NAME = "teacher_terms"
FULL = dict(rounds=8, warmup=1, batch_size=16, seq_len=64)  # the quality study's batch: 16 × 64 tokens
QUICK = dict(rounds=4, warmup=1, batch_size=8, seq_len=16)
TARGET = 1.10  # the anchored terms add at most 10% to a LoRA meta-step
BASELINE = "quiz loss only"
CONFIGURATIONS = (
    (BASELINE, {}),
    ("+ teacher_ce_weight=1", {"teacher_ce_weight": 1.0}),
    ("+ teacher_student_weight=1", {"teacher_student_weight": 1.0}),
    ("+ teacher_anchor_weight=1", {"teacher_anchor_weight": 1.0}),
    ("+ all three", {"teacher_ce_weight": 1.0, "teacher_student_weight": 1.0, "teacher_anchor_weight": 1.0}),
    ("+ teacher_anchor_weight=1, examples seen before", {"teacher_anchor_weight": 1.0}),
    ("+ all three, examples seen before", {"teacher_ce_weight": 1.0, "teacher_student_weight": 1.0,
                                           "teacher_anchor_weight": 1.0}),
)
SEEN = " examples seen before"
"""Configurations whose distiller has met every batch's examples (the second epoch on): the initial
teacher's logits are kept per example (``metakd.initial_teacher``), so the anchor runs no forward."""
PHASES = ("teacher_forward", "pilot", "quiz", "directional_derivative", "teacher_terms", "teacher_backward",
          "teacher_step", "student_step")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metakd bench teacher-terms", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random teacher, short batches (a smoke test)")
    p.add_argument("--rounds", type=int, help="measured rounds (default: 8; quick 4)")
    p.add_argument("--warmup", type=int, help="unmeasured rounds first (default: 1; quick 1)")
    p.add_argument("--batch-size", type=int, help="rows of a batch and of a quiz batch (default: 16; quick 8)")
    p.add_argument("--seq-len", type=int, help="tokens per row (default: 64; quick 16)")
    p.add_argument("--backend", default="jvp", choices=("higher", "jvp", "finite_diff"),
                   help="meta_grad (default: %(default)s)")
    p.add_argument("--pilot", default="reuse", choices=("restore", "reuse"),
                   help="pilot (default: %(default)s: the shorter step, so the larger share for the terms)")
    p.add_argument("--teacher-layers", default="all", help="teacher_layers of the LoRA adapters (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=NAME)
    p.add_argument("--out", default="results")
    args = p.parse_args(argv)
    args.settings = settings_from_args(p, args, QUICK if args.quick else FULL,
                                       ("rounds", "warmup", "batch_size", "seq_len"), minimum={"warmup": 0})
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    try:
        check_teacher_layers(args.teacher_layers)
    except ValueError as exc:
        p.error(f"--teacher-layers: {exc}")
    return args


def build(weights: dict[str, float], teacher, student, args: argparse.Namespace) -> MetaDistiller:
    """A LoRA meta-KD distiller (r=8 on query/value) of copies of ``teacher`` and ``student`` with
    the teacher-objective ``weights``."""
    s = args.settings
    cfg = DistillConfig(meta_update="lora", meta_grad=args.backend, pilot=args.pilot,
                        teacher_layers=args.teacher_layers, batch_size=s["batch_size"], student_lr=5e-4,
                        teacher_lr=2e-5, pilot_lr=1e-2, lora_target_modules=["query", "value"], seed=args.seed,
                        progress=False, **weights)
    return MetaDistiller(copy.deepcopy(teacher), copy.deepcopy(student), cfg, timer=PhaseTimer("cpu"))


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the rounds; the payload with every step's seconds and phases per configuration."""
    s = args.settings
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher, tokenizer = _teacher(args.quick)
    student = student_from_teacher(teacher, [0, len(find_layer_list(teacher)[1]) - 1])
    n = s["warmup"] + s["rounds"]
    vocab = getattr(teacher.config, "vocab_size", 512)
    batches = make_batches(n, s["batch_size"], s["seq_len"], tokenizer, vocab, args.seed)
    quizzes = make_batches(n, s["batch_size"], s["seq_len"], tokenizer, vocab, args.seed + 1)
    ds = [build(w, teacher, student, args) for _, w in CONFIGURATIONS]
    for (label, _), d in zip(CONFIGURATIONS, ds):
        if label.endswith(SEEN):  # an earlier epoch met these examples: their initial logits are kept
            for batch in batches:
                d.meta_step.initial_teacher_logits(batch, None)
    rows: list[list[dict[str, float]]] = [[] for _ in CONFIGURATIONS]
    load_start = _load()
    start = time.perf_counter()
    for r in range(n):
        for i in [(i + r) % len(ds) for i in range(len(ds))]:  # rotated: no configuration always runs first
            cpu = time.process_time()
            m = ds[i].step(batches[r], quizzes[r])
            cpu = time.process_time() - cpu
            if not m.get("meta"):
                raise RuntimeError(f"{CONFIGURATIONS[i][0]}: step {r} was not a meta-step")
            rows[i].append({"cpu_seconds": cpu, **{k: float(v) for k, v in m.items()
                                                   if k == "seconds" or k.startswith("time_")}})
        print(f"round {r + 1}/{n} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return {"benchmark": args.name, "quick": args.quick, "settings": s, "backend": args.backend, "pilot": args.pilot,
            "teacher_layers": args.teacher_layers, "seed": args.seed, "threads": torch.get_num_threads(),
            "results": summarize(rows, s["warmup"]), "total_seconds": time.perf_counter() - start,
            "load_average": {"start": load_start, "end": _load()}}


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarize(rows: list[list[dict[str, float]]], warmup: int) -> list[dict[str, Any]]:
    """Per configuration (in CONFIGURATIONS order): the measured steps' wall and CPU seconds, the
    per-round ratios to the quiz-loss step (median, quartiles, min–max; ``cpu_`` for CPU time), the
    per-round seconds added, the mean phases."""
    measured = [r[warmup:] for r in rows]
    base = measured[0]
    out = []
    for (label, weights), ms in zip(CONFIGURATIONS, measured):
        entry: dict[str, Any] = {"label": label, "weights": weights}
        for prefix, key in (("", "seconds"), ("cpu_", "cpu_seconds")):
            ratios = [m[key] / b[key] for m, b in zip(ms, base)]
            q1, q3 = _quartiles(ratios)
            entry.update({f"{prefix}step_seconds": [m[key] for m in ms],
                          f"{prefix}median_step_seconds": statistics.median(m[key] for m in ms),
                          f"{prefix}ratios": ratios, f"{prefix}ratio_median": statistics.median(ratios),
                          f"{prefix}ratio_q1": q1, f"{prefix}ratio_q3": q3, f"{prefix}ratio_min": min(ratios),
                          f"{prefix}ratio_max": max(ratios), f"{prefix}added_seconds_median":
                              statistics.median(m[key] - b[key] for m, b in zip(ms, base))})
        entry["phases_mean_seconds"] = {p: statistics.fmean(m.get(f"time_{p}", 0.0) for m in ms) for p in PHASES}
        out.append(entry)
    return out


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    """The target ``≤ TARGET×`` per configuration with terms, met or missed, on the median ratio of
    the wall time and of the CPU time."""
    def word(value: float) -> str:
        return "met" if value <= TARGET else f"MISSED by {value / TARGET:.2f}×"

    return [f"target {r['label']} ≤ {TARGET:.2f}× the quiz-loss step: wall {r['ratio_median']:.3f}× (median of "
            f"{len(r['ratios'])} paired rounds; IQR {r['ratio_q1']:.3f}–{r['ratio_q3']:.3f}) — "
            f"{word(r['ratio_median'])}; "
            f"CPU {r['cpu_ratio_median']:.3f}× (IQR {r['cpu_ratio_q1']:.3f}–{r['cpu_ratio_q3']:.3f}) — "
            f"{word(r['cpu_ratio_median'])}" for r in results[1:]]


def report(payload: dict[str, Any], out: str | Path) -> dict[str, Path]:
    results = payload["results"]
    def ratio(r: dict[str, Any], prefix: str, i: int) -> list[str]:
        if i == 0:
            return ["1 (baseline)", "—"]
        return [f"{r[prefix + 'ratio_median']:.3f}× (IQR {r[prefix + 'ratio_q1']:.3f}–{r[prefix + 'ratio_q3']:.3f})",
                f"{r[prefix + 'ratio_min']:.3f}–{r[prefix + 'ratio_max']:.3f}"]

    rows = [[r["label"], f"{r['median_step_seconds']:.3f}", *ratio(r, "", i), f"{r['cpu_median_step_seconds']:.3f}",
             *ratio(r, "cpu_", i), "—" if i == 0 else f"{1000 * r['cpu_added_seconds_median']:+.0f}",
             f"{1000 * r['phases_mean_seconds']['teacher_terms']:.1f}",
             f"{1000 * r['phases_mean_seconds']['teacher_forward']:.0f}"]
            for i, r in enumerate(results)]
    table = markdown_table(["configuration", "wall s/step (median)",
                            "× quiz loss only, wall (median of per-round ratios)", "wall min–max",
                            "CPU s/step (median)", "× quiz loss only, CPU", "CPU min–max",
                            "CPU ms added (median per round)", "terms phase ms (mean)", "teacher fwd ms (mean)"], rows)
    s = payload["settings"]
    la = payload.get("load_average") or {}
    notes = verdicts(results) + [
        f"{'a tiny random 4-block BERT (--quick)' if payload['quick'] else 'the embedded MiniLM-L6'} teacher with "
        f"LoRA r=8 on query/value (teacher_layers={payload['teacher_layers']}), student = its first and last "
        f"blocks; batch and quiz batch {s['batch_size']} × {s['seq_len']} tokens; meta_grad={payload['backend']}, "
        f"pilot={payload['pilot']}; every step a meta-step; {s['rounds']} measured rounds after {s['warmup']} "
        f"warm-up; every round runs one step of each configuration, order rotated; torch threads "
        f"{payload['threads']}",
        "CPU time: the process's (time.process_time) around each step, all its threads; the phase columns are wall "
        "time. The anchor (teacher_anchor_weight) runs one more no-grad teacher forward (the initial LoRA values "
        "swapped in): it shows in the teacher fwd column; the CE and student-KL terms reuse the logits the step has",
        "the machine is shared with other jobs: absolute times are noisy; the ratios pair steps of the same round"
        + (f" (1-minute load average {la['start']:.1f} at the start, {la['end']:.1f} at the end, on "
           f"{os.cpu_count()} cores)" if la.get("start") is not None and la.get("end") is not None else ""),
    ]
    by = {r["label"]: r for r in results}
    first, seen = by.get("+ all three"), by.get("+ all three," + SEEN)
    if first and seen:
        notes.append("a run of E epochs meets each example once in its first epoch (every batch new: the '+ all "
                     "three' row) and then E−1 times again ('examples seen before'); the mean CPU ratio over E epochs "
                     "is (first + (E−1)·seen)/E: " + ", ".join(
                         f"E={e}: {(first['cpu_ratio_median'] + (e - 1) * seen['cpu_ratio_median']) / e:.3f}×"
                         for e in (1, 2, 3, 4)) + " (from the measured medians)")
    paths = write_results(out, payload["benchmark"], payload, table, notes)
    print_report(payload, table, notes, [paths["json"], paths["md"]])
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report(measure(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
