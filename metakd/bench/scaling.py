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
import gc
import importlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .report import (fmt_bytes, markdown_table, parse_meta_cost_args, print_report, run_worker, serve_worker, settings_from_args,
                     write_results)

NAME = "scaling"
MODES = ("none", "lora", "full", "lora-nf4")
MODE_LABELS = {"none": "plain KD", "lora": "LoRA meta", "full": "full meta", "lora-nf4": "LoRA meta, NF4 teacher"}
COLORS = {"none": "#888888", "lora": "#2a9d8f", "full": "#e76f51", "lora-nf4": "#264653"}
LAYERS_SEP = "@"  # a meta mode whose teacher learns only some blocks: "lora@top:2" (teacher_layers="top:2")
META_GRADS = ("higher", "jvp", "finite_diff")

# Llama-style shapes of real model families (the parameter counts differ from the originals: the
# vocabulary here is the benchmark's, 8192 by default, so that the LM head does not dominate).
# name -> (hidden, blocks, attention heads, key/value heads, MLP width)
LADDER: dict[str, tuple[int, int, int, int, int]] = {
    "tiny-h32": (32, 2, 4, 4, 64),           # tiny ones: --quick
    "tiny-h64": (64, 2, 4, 4, 128),
    "tiny-h128": (128, 4, 8, 2, 256),        # grouped-query attention, as the larger ones
    "minilm-l6": (384, 6, 6, 6, 1536),       # MiniLM-L6-H384 (all-MiniLM-L6-v2)
    "bert-medium": (512, 8, 8, 8, 2048),     # BERT-medium / Pythia-70M width
    "smollm-135m": (576, 30, 9, 3, 1536),    # SmolLM-135M
    "smollm-360m": (960, 32, 15, 5, 2560),   # SmolLM-360M
    "mobilellm-600m": (1152, 40, 18, 6, 3072),  # MobileLLM-600M
    "tinyllama-1.1b": (2048, 22, 32, 4, 5632),  # TinyLlama-1.1B
}
# The default ladder stops where 2 CPU cores stop finishing in about 15 minutes; the larger sizes run
# with --sizes (memory is checked before each configuration either way).
FULL_SIZES = ("minilm-l6", "bert-medium", "smollm-135m", "smollm-360m")
QUICK_SIZES = ("tiny-h32", "tiny-h128")

FULL = dict(steps=3, warmup=1, batch_size=4, seq_len=64, vocab=8192)
QUICK = dict(steps=2, warmup=1, batch_size=2, seq_len=32, vocab=1024)
STUDENT_BLOCKS = 2
LORA_R = 8
LORA_TARGETS = ("q_proj", "v_proj")  # peft's default for Llama, which MetaDistiller uses
NF4_BYTES_PER_WEIGHT = 0.5 + 4 / 64  # packed 4-bit codes + one float32 absmax per block of 64
MARGIN = 1.2
MARGIN_BYTES = 512 * 2**20
ACTIVATION_FACTOR = 2.0
ALLOCATOR_SLACK = 256 * 2**20
DEFAULT_BASE_BYTES = 512 * 2**20  # RSS of a worker after its imports, until one has been measured
CROSSING = 0.5


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


# ---------------------------------------------------------------------------- pure functions
def split_mode(key: str) -> tuple[str, str]:
    """("lora", "top:2") for the run key "lora@top:2"; (mode, "all") for a plain mode."""
    mode, _, layers = key.partition(LAYERS_SEP)
    return mode, layers or "all"


def mode_label(key: str) -> str:
    mode, layers = split_mode(key)
    return MODE_LABELS[mode] + ("" if layers == "all" else f", teacher_layers={layers}")


def mode_color(key: str) -> str:
    mode, layers = split_mode(key)
    if layers == "all":
        return COLORS[mode]
    return {"lora": "#8ecae6", "full": "#f4a261", "lora-nf4": "#6c757d"}.get(mode, "#999999")

def fit_power_law(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float] | None:
    """Least-squares line through (log x, log y): ``y ≈ coefficient · x^exponent``. None with fewer
    than two distinct positive x (or any non-positive value: no logarithm)."""
    xs, ys = list(xs), list(ys)
    if len(xs) != len(ys) or len(xs) < 2 or any(not x > 0 for x in xs) or any(not y > 0 for y in ys):
        return None
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys)]
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 1e-12 * max(1.0, mx * mx):
        return None
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    log_coefficient = my - slope * mx
    try:
        coefficient = math.exp(log_coefficient)
    except OverflowError:  # sizes too close together for a meaningful fit
        coefficient = math.inf
    return {"exponent": slope, "coefficient": coefficient, "log_coefficient": log_coefficient, "points": len(pts)}


def crossing(xs: Sequence[float], ratios: Sequence[float], threshold: float = CROSSING) -> dict[str, Any]:
    """The smallest x at which ``ratio`` first drops to ``threshold`` or below, interpolating linearly in
    (log x, log ratio) between the last size above the threshold and the first at or below it.

    Returns ``{"status": ..., "x": ...}``: "interpolated" (x between two measured sizes), "at_first"
    (already at or below at the smallest size: x is that size, the crossing lies at or below it),
    "not_reached" (x is the largest size measured) or "no_data"."""
    pts = sorted((float(x), float(r)) for x, r in zip(xs, ratios) if x > 0 and r > 0)
    if not pts:
        return {"status": "no_data", "x": None, "threshold": threshold}
    if pts[0][1] <= threshold:
        return {"status": "at_first", "x": pts[0][0], "threshold": threshold}
    for (x0, r0), (x1, r1) in zip(pts, pts[1:]):
        if r1 <= threshold < r0:
            t = (math.log(threshold) - math.log(r0)) / (math.log(r1) - math.log(r0))
            x = math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))
            return {"status": "interpolated", "x": x, "threshold": threshold, "between": [x0, x1]}
    return {"status": "not_reached", "x": pts[-1][0], "threshold": threshold}


def describe_crossing(c: dict[str, Any]) -> str:
    if c["status"] == "interpolated":
        return f"at ≈ {_params(c['x'])} params (between {_params(c['between'][0])} and {_params(c['between'][1])})"
    if c["status"] == "at_first":
        return f"at or below the smallest size measured ({_params(c['x'])} params)"
    if c["status"] == "not_reached":
        return f"not reached up to {_params(c['x'])} params"
    return "no sizes with both modes measured"


def llama_param_counts(shape: Sequence[int], vocab: int, student_blocks: int = STUDENT_BLOCKS,
                       lora_r: int = LORA_R) -> dict[str, int]:
    """Parameter counts of a Llama causal LM (untied embeddings and LM head, no biases) of ``shape``
    (hidden, blocks, heads, kv heads, MLP width): the teacher, its Linear layers inside the blocks
    (what 4-bit quantizes), a student of ``student_blocks`` of its blocks, and LoRA r on q/v."""
    h, n, heads, kv, inter = shape
    head_dim = h // heads
    q, kvd = heads * head_dim, kv * head_dim
    linear = h * q + 2 * h * kvd + q * h + 3 * h * inter
    block = linear + 2 * h  # two RMSNorm weights
    outer = 2 * vocab * h + h  # embeddings, LM head, final norm
    return {"teacher": outer + n * block, "teacher_linear": n * linear,
            "student": outer + min(student_blocks, n) * block,
            "lora": n * lora_r * ((h + q) + (h + kvd)), "blocks": n, "hidden": h, "heads": heads,
            "intermediate": inter}


def predict_memory(counts: dict[str, int], mode: str, tokens: int, seq_len: int, vocab: int, base_bytes: int,
                   cuda: bool = False) -> dict[str, Any]:
    """Predicted peak bytes of one configuration: the process after its imports (``base_bytes``), the
    teacher's weights (float32, or NF4 codes for the blocks' Linear layers), the student with its
    gradients and AdamW states (16 B/param), φ's gradients and AdamW states (12 B/param; on CUDA
    AdamW's foreach temporaries add 4 B), the saved activations (the teacher's blocks in meta modes,
    the student's two blocks, logits), times a margin. Building an NF4 teacher holds the float32
    teacher and its reload at once.

    The activation term (``ACTIVATION_FACTOR`` × a count of the tensors a Llama block saves for its
    backward, float32) is calibrated on the measured peaks of the two smallest full-ladder sizes."""
    mode = split_mode(mode)[0]  # the prediction of all blocks learning: an upper bound for teacher_layers
    p, s = counts["teacher"], counts["student"]
    phi = {"none": 0, "lora": counts["lora"], "lora-nf4": counts["lora"], "full": p}[mode]
    if mode == "lora-nf4":
        weights = 4 * (p - counts["teacher_linear"]) + NF4_BYTES_PER_WEIGHT * counts["teacher_linear"]
    else:
        weights = 4 * p
    h, inter, heads = counts["hidden"], counts["intermediate"], counts["heads"]
    per_block = ACTIVATION_FACTOR * 4 * tokens * (10 * h + 5 * inter + 2 * heads * seq_len)
    blocks = STUDENT_BLOCKS + (0 if mode == "none" else counts["blocks"])
    activations = blocks * per_block + 16 * 4 * tokens * vocab + ALLOCATOR_SLACK
    parts = {"base": base_bytes, "teacher_weights": weights, "student_states": 16 * s,
             "phi_states": (16 if cuda else 12) * phi, "activations": activations}
    step = sum(parts.values())
    build = base_bytes + 4 * p + 4 * s + (4 * p + weights if mode == "lora-nf4" else 0)
    peak = max(step, build)
    return {"bytes": int(MARGIN * peak + MARGIN_BYTES), "parts": {k: int(v) for k, v in parts.items()},
            "build_bytes": int(build), "trainable": int(phi), "margin": MARGIN, "margin_bytes": MARGIN_BYTES}


def _params(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


# ---------------------------------------------------------------------------- memory of this machine
def available_bytes(device: str) -> int | None:
    """Memory a new configuration may use now: free GPU memory on CUDA, else MemAvailable."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_bytes() -> int | None:
    from .meta_grad import _rss_bytes

    return _rss_bytes()


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ``clear_refs`` 5), so that the peak read
    later (``ru_maxrss``) is the peak of what follows and not of building the models."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- one configuration (worker)
def build_teacher(shape: Sequence[int], vocab: int, seq_len: int, seed: int):
    """A randomly initialised Llama causal LM of ``shape`` with eager attention (float32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    h, n, heads, kv, inter = shape
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=n,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=max(seq_len, 128),
                      pad_token_id=0, bos_token_id=1, eos_token_id=vocab - 1, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    return LlamaForCausalLM(cfg).eval()


def two_block_student(teacher) -> torch.nn.Module:
    """The teacher's first and last blocks (with its embeddings, final norm and LM head), copied by
    ``student_from_teacher`` with only those two blocks in place, so that the whole teacher is never
    copied (a transient second teacher would dominate the memory of a large one)."""
    from ..models import find_layer_list, student_from_teacher

    name, blocks = find_layer_list(teacher)
    parent_name, _, attr = name.rpartition(".")
    parent = teacher.get_submodule(parent_name) if parent_name else teacher
    keep = [0, len(blocks) - 1][:STUDENT_BLOCKS] if len(blocks) > 1 else [0]
    setattr(parent, attr, torch.nn.ModuleList([blocks[i] for i in keep]))
    layers = teacher.config.num_hidden_layers
    try:
        return student_from_teacher(teacher, list(range(len(keep))))
    finally:
        setattr(parent, attr, blocks)
        teacher.config.num_hidden_layers = layers


def quantize_nf4(teacher, device: torch.device):
    """The teacher reloaded with NF4 blocks (bitsandbytes; embeddings, norms and the LM head stay float32):
    saved to disk, the float32 copy freed, then loaded quantized, the path a checkpoint takes
    (``metakd.quantization.load_quantized``, as ``quantize`` does without freeing)."""
    from ..models import use_eager_attention
    from ..quantization import load_quantized

    with tempfile.TemporaryDirectory(prefix="metakd-scaling-") as tmp:
        teacher.save_pretrained(tmp, safe_serialization=True)
        del teacher
        gc.collect()
        model = load_quantized(tmp, 4, "nf4", kind="causal_lm", device=device)
    use_eager_attention(model)
    return model.eval()


def lm_batches(n: int, batch_size: int, seq_len: int, vocab: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of random token ids (no padding); the labels are the ids (next-token targets)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (batch_size, seq_len), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def optimizer_state_bytes(optimizer) -> int:
    if optimizer is None:
        return 0
    return sum(tensor_bytes(state.values()) for state in optimizer.state.values())


def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """One (size, mode) in its own process; an exception is recorded (e.g. a 4-bit teacher that
    bitsandbytes cannot run here) so that the ladder goes on."""
    try:
        return {"status": "ok", **_measure_config(spec)}
    except Exception as exc:  # noqa: BLE001 - the error string goes into the results
        import traceback

        traceback.print_exc(file=sys.stderr)
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:500]}


def _measure_config(spec: dict[str, Any]) -> dict[str, Any]:
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from ..config import DistillConfig
    from ..distiller import MetaDistiller
    from ..quantization import teacher_memory_bytes
    from ..telemetry import EnergyMeter, measure

    # the same libraries in every mode's process, imported before anything is built: like-for-like baselines
    importlib.import_module("peft")
    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        pass
    hf_logging.set_verbosity_error()
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    mode, layers = split_mode(spec["mode"])
    rss_imports = rss_bytes()

    t0 = time.perf_counter()
    teacher = build_teacher(spec["shape"], spec["vocab"], spec["seq_len"], spec["seed"])
    teacher_params = sum(p.numel() for p in teacher.parameters())
    student = two_block_student(teacher)
    if mode == "lora-nf4":
        teacher = quantize_nf4(teacher, device)
    weight_bytes = teacher_memory_bytes(teacher)
    cfg = DistillConfig(task="causal_lm", meta_update="lora" if mode == "lora-nf4" else mode,
                        meta_grad=spec["meta_grad"], pilot="restore", batch_size=spec["batch_size"],
                        teacher_layers=layers if mode != "none" else "all",
                        meta_batch_size=spec.get("meta_batch_size") if mode != "none" else None,
                        student_lr=5e-4, teacher_lr=2e-5, pilot_lr=1e-2, seed=spec["seed"], progress=False)
    d = MetaDistiller(teacher, student, cfg, device=device)
    del teacher, student
    gc.collect()
    build_seconds = time.perf_counter() - t0

    n = spec["warmup"] + spec["steps"]
    batches = lm_batches(n, spec["batch_size"], spec["seq_len"], spec["vocab"], spec["seed"])
    quizzes = lm_batches(n, spec["batch_size"], spec["seq_len"], spec["vocab"], spec["seed"] + 1)
    if cuda:
        torch.cuda.synchronize(device)
        models_bytes = torch.cuda.memory_allocated(device)
        peak_reset = True  # measure() resets CUDA's peak on entry
    else:
        models_bytes = rss_bytes()
        peak_reset = reset_peak_rss()
    meter = EnergyMeter()
    history = []
    bar = tqdm(total=n, desc=spec["label"], leave=False, disable=not spec["progress"], file=sys.stderr)
    with measure(device) as m:
        for i, (b, q) in enumerate(zip(batches, quizzes)):
            if i == spec["warmup"]:
                meter.start()
            history.append(d.step(b, q))
            bar.update(1)
        joules, energy_source, energy_estimated = meter.stop()
    bar.close()
    timed = history[spec["warmup"]:]
    secs = [h["seconds"] for h in timed]
    grad_bytes = tensor_bytes(d.phi)  # φ's grads have φ's shapes and dtypes (freed after each step)
    opt_bytes = optimizer_state_bytes(d.teacher_optimizer)
    peak = m.peak_memory_bytes
    losses = [h.get("quiz_loss", h["student_loss"]) for h in history]
    return {
        "teacher_params": teacher_params,
        "teacher_weight_bytes": weight_bytes,
        "student_params": sum(p.numel() for p in d.student.parameters()),
        "trainable_teacher_params": d.trainable_teacher_parameters(),
        "threads": torch.get_num_threads(),
        "build_seconds": build_seconds,
        "median_step_seconds": statistics.median(secs),
        "step_seconds": secs,
        "steps_wall_seconds": m.seconds,
        "steps_cpu_seconds": m.cpu_seconds,
        "rss_after_imports_bytes": rss_imports,
        "models_bytes": models_bytes,
        "peak_memory_bytes": peak,
        "peak_above_models_bytes": (peak - models_bytes) if peak is not None and models_bytes is not None else None,
        "memory_source": m.memory_source + ("" if cuda else (", reset to the RSS after building the models"
                                                            if peak_reset else ", lifetime (includes building)")),
        "peak_reset_after_build": peak_reset,
        "teacher_grad_bytes": grad_bytes,
        "teacher_optimizer_bytes": opt_bytes,
        "grad_optimizer_bytes": grad_bytes + opt_bytes,
        "student_optimizer_bytes": optimizer_state_bytes(d.student_optimizer),
        "energy_joules_per_step": joules / len(secs) if joules is not None else None,
        "energy_source": energy_source,
        "energy_estimated": energy_estimated,
        "finite": all(math.isfinite(x) for x in losses),
    }


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
        print(f"[{i}/{len(runs)}] {size} {mode} ({_params(counts['teacher'])} params, predicted peak "
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


def ladder_predictions(settings: dict[str, Any], modes: Sequence[str], device: str,
                       base_bytes: int) -> dict[str, Any]:
    """Predicted peak of every ladder size and mode (nothing runs) against the memory available now, and
    the largest ladder teacher predicted to fit per mode."""
    tokens = settings["batch_size"] * settings["seq_len"]
    avail = available_bytes(device)
    table: dict[str, dict[str, int]] = {}
    largest: dict[str, str | None] = {m: None for m in modes}
    for size in sorted(LADDER, key=lambda n: llama_param_counts(LADDER[n], settings["vocab"])["teacher"]):
        counts = llama_param_counts(LADDER[size], settings["vocab"])
        table[size] = {"teacher_params": counts["teacher"]}
        for mode in modes:
            pred = predict_memory(counts, mode, tokens, settings["seq_len"], settings["vocab"], base_bytes,
                                  device.startswith("cuda"))["bytes"]
            table[size][mode] = pred
            if avail is None or pred <= avail:
                largest[mode] = size
    return {"available_bytes": avail, "base_bytes": base_bytes, "predicted_peak_bytes": table,
            "largest_predicted_to_fit": largest}


# ---------------------------------------------------------------------------- analysis and report
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
        head = [r["size"], _params(params), mode_label(r["mode"])]
        if r.get("status") != "ok":
            why = r.get("reason") if r.get("status") == "skipped" else r.get("error", "")
            rows.append(head + [_params(r["predicted_trainable_params"]) if r["predicted_trainable_params"] else "0",
                                f"**{r.get('status')}**: {why}", "–", "–", "–", "–",
                                fmt_bytes(r["predicted_peak_bytes"]), "–"])
            continue
        ratio = (r.get("vs_full") or {}).get("peak_memory_bytes")
        energy = r.get("energy_joules_per_step")
        energy_s = "n/a" if energy is None else f"{energy:.1f} J" + (" (est.)" if r["energy_estimated"] else "")
        rows.append(head + [_params(r["trainable_teacher_params"]) if r["trainable_teacher_params"] else "0",
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
            ratios = ", ".join(f"{_params(p['teacher_params'])}: {p['ratio']:.2f}" for p in e["ratios"])
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
                        + (f" ({_params(lp['predicted_peak_bytes'][size]['teacher_params'])} params)" if size else "")
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
