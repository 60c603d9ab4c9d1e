"""What chunking the token-level loss saves: one causal-LM distillation step (LoRA meta-update,
jvp backend, and plain KD) at several ``lm_chunk_size`` values, on a vocabulary of real size.
Prints a table and writes results/lm_chunking.{json,md}.

    metakd bench lm-chunking [--quick] [--vocab 32000] [--batch-size 8] [--seq-len 256] [--device cpu|cuda]

Every configuration runs in its own process; peak memory is that process's peak RSS on CPU
(CUDA: max_memory_allocated) minus its resident size just before the first step, so the models'
own weights are left out and what remains is the step's working memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import torch

from ..config import DistillConfig
from ..distiller import MetaDistiller
from ..models import tiny_causal_lm
from ..telemetry import peak_rss_bytes
from .report import (fmt_bytes, markdown_table, print_report, run_worker, serve_worker, settings_from_args,
                     write_results)

NAME = "lm_chunking"
FULL = dict(vocab=32000, batch_size=8, seq_len=256, steps=3, warmup=1, chunks=(0, 4096, 1024, 256))
QUICK = dict(vocab=2000, batch_size=2, seq_len=32, steps=1, warmup=1, chunks=(0, 16))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metakd bench lm-chunking", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small vocabulary and batch (a smoke test)")
    p.add_argument("--vocab", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--chunks", help="comma-separated lm_chunk_size values; 0 = no chunking")
    p.add_argument("--modes", default="none,lora", help="subset of none,lora")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="results")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    s = settings_from_args(p, args, QUICK if args.quick else FULL, ("vocab", "batch_size", "seq_len", "steps"))
    if args.chunks:
        try:
            s["chunks"] = tuple(int(x) for x in args.chunks.split(","))
        except ValueError:
            p.error("--chunks takes comma-separated integers")
        if any(c < 0 for c in s["chunks"]):
            p.error("--chunks values must be >= 0")
    args.mode_list = [m for m in args.modes.split(",") if m]
    if not args.mode_list or any(m not in ("none", "lora") for m in args.mode_list):
        p.error("--modes takes a subset of none,lora")
    args.settings = s
    return args


def _current_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in its own process."""
    device = torch.device(spec["device"])
    teacher = tiny_causal_lm("gpt2", vocab_size=spec["vocab"], hidden_size=64, num_layers=2, num_heads=2,
                             max_positions=spec["seq_len"], seed=0)
    student = tiny_causal_lm("gpt2", vocab_size=spec["vocab"], hidden_size=64, num_layers=1, num_heads=2,
                             max_positions=spec["seq_len"], seed=1)
    cfg = DistillConfig(task="causal_lm", meta_update=spec["mode"], meta_grad="jvp",
                        lm_chunk_size=spec["chunk"] or None, progress=False)
    d = MetaDistiller(teacher.to(device), student.to(device), cfg, device=device)
    g = torch.Generator().manual_seed(0)

    def batch():
        ids = torch.randint(0, spec["vocab"], (spec["batch_size"], spec["seq_len"]), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    batches = [(batch(), batch()) for _ in range(spec["warmup"] + spec["steps"])]
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _current_rss()
    seconds = []
    for i, (b, q) in enumerate(batches):
        start = time.perf_counter()
        d.step(b, q)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= spec["warmup"]:
            seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes()
    return {**spec, "median_step_seconds": statistics.median(seconds), "step_seconds": seconds,
            "step_memory_bytes": peak - base,
            "peak_memory_bytes": peak, "logits_bytes": spec["batch_size"] * spec["seq_len"] * spec["vocab"] * 4,
            "memory_source": "cuda max_memory_allocated" if cuda else "peak RSS (ru_maxrss)"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return serve_worker(args.worker, run_config)
    s = args.settings
    results = []
    load_start = os.getloadavg()[0]
    for mode in args.mode_list:
        for chunk in s["chunks"]:
            label = f"{mode} chunk={chunk or 'none'}"
            print(f"{label} ...", file=sys.stderr, flush=True)
            results.append(run_worker(__name__, {"label": label, "mode": mode, "chunk": chunk, "device": args.device,
                                                 **{k: v for k, v in s.items() if k != "chunks"}}))
    rows = []
    for r in results:
        ref = next(x for x in results if x["mode"] == r["mode"] and x["chunk"] == s["chunks"][0])
        rows.append(["plain KD" if r["mode"] == "none" else "LoRA meta-update (jvp)", r["chunk"] or "none",
                     f"{r['median_step_seconds']:.3f} ({min(r['step_seconds']):.2f}–{max(r['step_seconds']):.2f})",
                     fmt_bytes(r["step_memory_bytes"]),
                     f"{r['step_memory_bytes'] / r['logits_bytes']:.1f}",
                     f"{r['step_memory_bytes'] / max(ref['step_memory_bytes'], 1):.2f}x"])
    table = markdown_table(["mode", "lm_chunk_size", "s/step: median (min–max)", "step memory",
                            "step memory / one logits tensor", f"vs chunk={s['chunks'][0] or 'none'}"], rows)
    notes = [f"GPT-2 teacher (2 blocks, width 64) and student (1 block), vocabulary {s['vocab']}, batch "
             f"{s['batch_size']} x {s['seq_len']} tokens; one logits tensor is "
             f"{fmt_bytes(s['batch_size'] * s['seq_len'] * s['vocab'] * 4)} (float32)",
             f"median of {s['steps']} steps after {s['warmup']} warm-up; device {args.device}",
             "step memory: peak minus the process's resident size before the first step "
             f"({results[0]['memory_source'] if results else 'n/a'})",
             f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end on "
             f"{os.cpu_count()} cores: above the core count, other jobs inflate and scatter the times (min–max)"]
    payload = {"benchmark": NAME, "quick": args.quick, "settings": s, "results": results}
    paths = write_results(args.out, NAME, payload, table, notes)
    print_report(payload, table, notes, [paths["json"], paths["md"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
