"""How the cost of one meta-step grows with the teacher: plain KD, LoRA meta-update, full
meta-update and LoRA on a 4-bit (NF4) teacher, over a ladder of randomly initialised Llama-style
causal-LM teachers from MiniLM scale up to the largest that fits the machine. Prints a table and
writes results/scaling.{json,md,png}.

    metakd bench scaling [--quick] [--sizes minilm-l6,smollm-135m] [--modes none,lora,full,lora-nf4]
                         [--teacher-layers all,top:2] [--meta-batch-size M]
                         [--steps N] [--threads 2] [--device cpu|cuda] [--out results]

The default ladder (MiniLM-L6 to SmolLM-360M shapes, 20M-330M parameters) finishes in about ten
minutes on 2 idle CPU cores; mobilellm-600m and tinyllama-1.1b run with --sizes (on a 23.5 GiB
machine the full meta-update is predicted to fit up to the 600M one, LoRA beyond 1B).

Every (size, mode) runs in its own process (peak memory is per process). Before a configuration
runs, its peak memory is predicted from parameter counts (weights + gradients + AdamW states +
activations, with a margin); one predicted not to fit the memory available now is skipped and
labelled instead of run. Costs only: the teachers are random, no training quality is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .report import fmt_bytes, parse_meta_cost_args, run_worker, serve_worker, settings_from_args
from .scaling_model import (ACTIVATION_FACTOR, ALLOCATOR_SLACK, COLORS, CROSSING, DEFAULT_BASE_BYTES, FULL,
                            FULL_SIZES, LADDER, LAYERS_SEP, LORA_R, LORA_TARGETS, MARGIN, MARGIN_BYTES, META_GRADS,
                            MODE_LABELS, MODES, NAME, NF4_BYTES_PER_WEIGHT, QUICK, QUICK_SIZES, STUDENT_BLOCKS,
                            available_bytes, crossing, describe_crossing, fit_power_law, ladder_predictions,
                            llama_param_counts, mode_color, mode_label, params_text, predict_memory, split_mode)
from .scaling_report import (METRICS, build_table, crossing_lines, growth, growth_table, plot, ratios_and_crossings,
                             report)
from .scaling_worker import (build_teacher, lm_batches, optimizer_state_bytes, quantize_nf4, reset_peak_rss,
                             rss_bytes, run_config, tensor_bytes, two_block_student)

# the benchmark's parts: scaling_model (the ladder, predictions, fits), scaling_worker (one configuration, in its
# own process), scaling_report (analysis and files); their names are this module's too
__all__ = [
    "ACTIVATION_FACTOR", "ALLOCATOR_SLACK", "COLORS", "CROSSING", "DEFAULT_BASE_BYTES", "FULL", "FULL_SIZES", "LADDER",
    "LAYERS_SEP", "LORA_R", "LORA_TARGETS", "MARGIN", "MARGIN_BYTES", "META_GRADS", "METRICS", "MODES", "MODE_LABELS",
    "NAME", "NF4_BYTES_PER_WEIGHT", "QUICK", "QUICK_SIZES", "STUDENT_BLOCKS", "available_bytes", "build_table",
    "build_teacher", "crossing", "crossing_lines", "describe_crossing", "fit_power_law", "growth", "growth_table",
    "ladder_predictions", "llama_param_counts", "lm_batches", "main", "mode_color", "mode_label",
    "optimizer_state_bytes", "params_text", "parse_args", "plot", "predict_memory", "quantize_nf4",
    "ratios_and_crossings", "report", "reset_peak_rss", "rss_bytes", "run_config", "run_ladder", "split_mode",
    "tensor_bytes", "two_block_student", "versions",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metakd bench scaling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"tiny teachers ({','.join(QUICK_SIZES)}), 1 warm-up + 2 steps (a smoke test for CI)")
    p.add_argument("--sizes", help="comma-separated teacher sizes from the ladder: " + ",".join(LADDER))
    p.add_argument("--modes", default=",".join(MODES), help="subset of " + ",".join(MODES) + " (default: all)")
    p.add_argument("--steps", type=int, help="timed steps per configuration (after the warm-up steps)")
    p.add_argument("--warmup", type=int, help="untimed steps first (optimizer states and caches settle)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="tokens per example")
    p.add_argument("--vocab", type=int, help="vocabulary size of the teachers and students")
    p.add_argument("--teacher-layers", default="all",
                   help="comma-separated teacher_layers values for the meta modes, e.g. all,top:2 (default: all)")
    p.add_argument("--meta-batch-size", type=int, help="rows of each batch the meta-gradient uses (default: all)")
    p.add_argument("--meta-grad", default="higher", choices=META_GRADS, help="meta-gradient backend (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch threads per configuration (default: torch's choice)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results", help="directory for the result files")
    p.add_argument("--name", default=NAME, help="stem of the result files (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars of the steps")
    p.add_argument("--render", metavar="JSON", help="measure nothing: rebuild the table, notes and plot from a "
                                                   "scaling.json written earlier")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    s = settings_from_args(p, args, QUICK if args.quick else FULL,
                           ("steps", "warmup", "batch_size", "seq_len", "vocab"), minimum={"warmup": 0, "seq_len": 2,
                                                                                           "vocab": 16})
    if args.sizes is not None:
        sizes = [x.strip() for x in args.sizes.split(",") if x.strip()]
        bad = [x for x in sizes if x not in LADDER]
        if not sizes or bad:
            p.error(f"--sizes takes names from the ladder ({','.join(LADDER)}); got {args.sizes!r}")
        if len(set(sizes)) != len(sizes):
            p.error(f"--sizes lists a size twice: {args.sizes!r}")
    else:
        sizes = list(QUICK_SIZES if args.quick else FULL_SIZES)
    args.size_list = sorted(sizes, key=lambda n: llama_param_counts(LADDER[n], s["vocab"])["teacher"])
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.mode_list or any(m not in MODES for m in args.mode_list) or len(set(args.mode_list)) != len(args.mode_list):
        p.error(f"--modes takes a subset of {','.join(MODES)}; got {args.modes!r}")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    parse_meta_cost_args(p, args, s["batch_size"], forbidden=LAYERS_SEP)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    if args.render and not Path(args.render).is_file():
        p.error(f"--render: no such file {args.render!r}")
    args.settings = s
    return args


# ---------------------------------------------------------------------------- the ladder (parent)
def run_ladder(args: argparse.Namespace) -> list[dict[str, Any]]:
    s = args.settings
    tokens = s["batch_size"] * s["seq_len"]
    cuda = args.device.startswith("cuda")
    base = 0 if cuda else DEFAULT_BASE_BYTES  # replaced by what the first worker measures
    keys = [m if (layers == "all" or m == "none") else f"{m}{LAYERS_SEP}{layers}"
            for m in args.mode_list for layers in args.layers_list]
    runs = [(size, key) for size in args.size_list for key in dict.fromkeys(keys)]
    results = []
    for i, (size, mode) in enumerate(runs, 1):
        shape = LADDER[size]
        counts = llama_param_counts(shape, s["vocab"])
        pred = predict_memory(counts, mode, tokens, s["seq_len"], s["vocab"], base, cuda)
        avail = available_bytes(args.device)
        entry: dict[str, Any] = {"size": size, "mode": mode, "label": f"{size} {mode}", "shape": list(shape),
                                 "predicted_teacher_params": counts["teacher"],
                                 "predicted_trainable_params": pred["trainable"],
                                 "predicted_peak_bytes": pred["bytes"], "prediction": pred,
                                 "available_bytes": avail}
        print(f"[{i}/{len(runs)}] {size} {mode} ({params_text(counts['teacher'])} params, predicted peak "
              f"{fmt_bytes(pred['bytes'])}, available {fmt_bytes(avail)})", file=sys.stderr, flush=True)
        if avail is not None and pred["bytes"] > avail:
            entry.update(status="skipped", reason=f"predicted {fmt_bytes(pred['bytes'])} > available "
                                                  f"{fmt_bytes(avail)}")
            print(f"    skipped: {entry['reason']}", file=sys.stderr, flush=True)
            results.append(entry)
            continue
        spec = {"label": entry["label"], "size": size, "mode": mode, "shape": list(shape), "device": args.device,
                "seed": args.seed, "threads": args.threads, "meta_grad": args.meta_grad,
                "meta_batch_size": args.meta_batch_size,
                "progress": not args.no_progress, **{k: s[k] for k in ("steps", "warmup", "batch_size", "seq_len",
                                                                          "vocab")}}
        t0 = time.perf_counter()
        try:
            entry.update(run_worker(__name__, spec))
        except RuntimeError as exc:  # the worker died (e.g. killed for memory)
            entry.update(status="error", error=str(exc))
        entry["wall_seconds"] = time.perf_counter() - t0
        if entry["status"] == "ok":
            print(f"    {entry['median_step_seconds']:.3f} s/step, peak {fmt_bytes(entry['peak_memory_bytes'])} "
                  f"({fmt_bytes(entry['peak_above_models_bytes'])} above the models), {entry['wall_seconds']:.0f} s "
                  "in all", file=sys.stderr, flush=True)
        else:
            print(f"    error: {entry['error']}", file=sys.stderr, flush=True)
        if entry.get("rss_after_imports_bytes") and not cuda:
            base = entry["rss_after_imports_bytes"]
        results.append(entry)
    return results


def versions() -> dict[str, str | None]:
    from ..telemetry import package_version

    return {k: package_version(k) for k in ("torch", "transformers", "peft", "higher", "bitsandbytes", "metakd")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, run_config)
    if args.render:
        payload = json.loads(Path(args.render).read_text())
        report(payload, args.out, args.name)
        return 0
    start = time.perf_counter()
    results = run_ladder(args)
    base = next((r["rss_after_imports_bytes"] for r in results if r.get("rss_after_imports_bytes")),
                DEFAULT_BASE_BYTES)
    payload = {"benchmark": args.name, "quick": args.quick, "settings": args.settings, "sizes": args.size_list,
               "modes": args.mode_list, "teacher_layers": args.layers_list,
               "meta_batch_size": args.meta_batch_size, "ladder": {k: list(LADDER[k]) for k in args.size_list},
               "device": args.device, "threads": args.threads, "meta_grad": args.meta_grad, "seed": args.seed,
               "versions": versions(), "total_seconds": time.perf_counter() - start, "results": results,
               "ladder_predictions": ladder_predictions(args.settings, args.mode_list, args.device,
                                                        0 if args.device.startswith("cuda") else base)}
    report(payload, args.out, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
