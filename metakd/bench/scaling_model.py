"""The ladder of ``metakd bench scaling``: teacher shapes, parameter counts, the predicted peak memory
of a configuration and the memory available for it, power-law fits and where a ratio crosses a threshold.
Pure functions (no model is built)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

import torch

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
        return (f"at ≈ {params_text(c['x'])} params (between {params_text(c['between'][0])} and "
                f"{params_text(c['between'][1])})")
    if c["status"] == "at_first":
        return f"at or below the smallest size measured ({params_text(c['x'])} params)"
    if c["status"] == "not_reached":
        return f"not reached up to {params_text(c['x'])} params"
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


def params_text(n: float) -> str:
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
