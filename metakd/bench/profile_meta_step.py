"""Where the time of a meta-step goes inside each phase: torch.profiler over a few meta-steps of one
configuration, every operator attributed to the MetaDistiller phase (pilot, quiz, directional
derivative, ...) it ran in. Prints the top operators per phase and writes
results/profile_meta_step.{json,md}.

    metakd bench profile-meta-step [--quick] [--steps N] [--mode lora] [--backend finite_diff]
                                   [--fd-scheme central] [--teacher-layers top:2] [--pilot reuse]

The MiniLM-L6 teacher, a 2-block student and batches of 32 × 64 tokens (as meta-grad and
meta-step-cost); one process, one configuration. Profiling adds overhead: compare phases with
each other, not with the timings of the other benchmarks.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ..config import DistillConfig
from ..distiller import MetaDistiller
from ..models import find_layer_list, student_from_teacher
from ..telemetry import PhaseTimer
from .meta_grad import PHASES, _teacher, make_batches
from .report import markdown_table, print_report, settings_from_args, write_results

NAME = "profile_meta_step"
FULL = dict(steps=2, warmup=1, batch_size=32, seq_len=64, top=8)
QUICK = dict(steps=1, warmup=1, batch_size=8, seq_len=16, top=5)


class ProfiledTimer(PhaseTimer):
    """A phase timer that also marks each phase as a ``record_function`` range for torch.profiler."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with torch.profiler.record_function(f"phase:{name}"), super().phase(name):
            yield


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metakd bench profile-meta-step", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random teacher, short batches")
    p.add_argument("--steps", type=int, help="profiled meta-steps (after the warm-up ones)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--top", type=int, help="operators listed per phase")
    p.add_argument("--mode", default="lora", choices=("lora", "full"))
    p.add_argument("--backend", default="finite_diff", choices=("higher", "jvp", "finite_diff"))
    p.add_argument("--fd-scheme", default="central", choices=("central", "forward"))
    p.add_argument("--pilot", default="reuse", choices=("restore", "reuse"))
    p.add_argument("--teacher-layers", default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=NAME)
    p.add_argument("--out", default="results")
    args = p.parse_args(argv)
    args.settings = settings_from_args(p, args, QUICK if args.quick else FULL,
                                       ("steps", "warmup", "batch_size", "seq_len", "top"), minimum={"warmup": 0})
    try:
        DistillConfig(teacher_layers=args.teacher_layers)
    except ValueError as exc:
        p.error(f"--teacher-layers: {exc}")
    return args


def attribute(events: Any) -> dict[str, dict[str, float]]:
    """Self CPU microseconds per (phase, operator): every event counts towards the innermost
    ``phase:NAME`` range above it ("outside" when none)."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        if e.name.startswith("phase:"):
            continue
        parent, phase = e.cpu_parent, "outside"
        while parent is not None:
            if parent.name.startswith("phase:"):
                phase = parent.name[len("phase:"):]
                break
            parent = parent.cpu_parent
        out[phase][e.name] += e.self_cpu_time_total
    return {k: dict(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = args.settings
    torch.manual_seed(args.seed)
    teacher, tokenizer = _teacher(args.quick)
    student = student_from_teacher(teacher, [0, len(find_layer_list(teacher)[1]) - 1])
    cfg = DistillConfig(meta_update=args.mode, meta_grad=args.backend, fd_scheme=args.fd_scheme, pilot=args.pilot,
                        teacher_layers=args.teacher_layers, batch_size=s["batch_size"], pilot_lr=1e-2,
                        lora_target_modules=["query", "value"], seed=args.seed, progress=False)
    d = MetaDistiller(teacher, student, cfg, timer=ProfiledTimer())
    n = s["warmup"] + s["steps"]
    vocab = getattr(teacher.config, "vocab_size", 512)
    batches = make_batches(n, s["batch_size"], s["seq_len"], tokenizer, vocab, args.seed)
    quizzes = make_batches(n, s["batch_size"], s["seq_len"], tokenizer, vocab, args.seed + 1)
    for b, q in zip(batches[:s["warmup"]], quizzes[:s["warmup"]]):
        d.step(b, q)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for b, q in zip(batches[s["warmup"]:], quizzes[s["warmup"]:]):
            d.step(b, q)
    per = attribute(prof.events())
    steps = s["steps"]
    totals = {ph: sum(ops.values()) / steps / 1e6 for ph, ops in per.items()}
    rows, payload_phases = [], {}
    for ph in [p for p in PHASES if p in per] + [p for p in per if p not in PHASES]:
        ops = sorted(per[ph].items(), key=lambda kv: -kv[1])
        payload_phases[ph] = {"seconds_per_step": totals[ph],
                              "top_ops": [{"op": k, "seconds_per_step": v / steps / 1e6} for k, v in ops[:s["top"]]]}
        for k, v in ops[:s["top"]]:
            rows.append([ph, f"{totals[ph]:.3f}", k, f"{v / steps / 1e6:.3f}", f"{v / max(sum(per[ph].values()), 1):.0%}"])
    body = markdown_table(["phase", "phase self-CPU s/step", "operator", "self-CPU s/step", "share of phase"], rows)
    notes = [f"configuration: {args.mode} meta-update, meta_grad={args.backend}"
             + (f" ({args.fd_scheme})" if args.backend == "finite_diff" else "")
             + f", pilot={args.pilot}, teacher_layers={args.teacher_layers}; batch {s['batch_size']} × {s['seq_len']}, "
             f"{'tiny random teacher (--quick)' if args.quick else 'MiniLM-L6 teacher, 2-block student'}",
             f"torch.profiler (CPU), {steps} profiled step(s) after {s['warmup']} warm-up; self CPU time of each "
             "operator, attributed to the innermost MetaDistiller phase it ran in; profiling adds overhead",
             "the machine is shared with other jobs: absolute times are noisy"]
    payload = {"benchmark": args.name, "quick": args.quick, "settings": s, "mode": args.mode, "backend": args.backend,
               "fd_scheme": args.fd_scheme, "pilot": args.pilot, "teacher_layers": args.teacher_layers,
               "phases": payload_phases}
    paths = write_results(args.out, args.name, payload, body, notes)
    print_report(payload, body, notes, [paths["json"], paths["md"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
