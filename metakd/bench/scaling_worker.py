"""One configuration of ``metakd bench scaling``, in a worker process of its own: the teacher and
student built, the steps timed, memory and energy measured."""

from __future__ import annotations

import gc
import importlib
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .scaling_model import STUDENT_BLOCKS, split_mode


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


def _build(spec: dict[str, Any], device: torch.device, mode: str, layers: str):
    """The MetaDistiller of one configuration (random teacher, two-block student; NF4 reload for
    ``lora-nf4``), with the teacher's parameter count and weight bytes and the seconds it took."""
    from ..config import DistillConfig
    from ..distiller import MetaDistiller
    from ..quantization import teacher_memory_bytes

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
    return d, teacher_params, weight_bytes, build_seconds


def _measure_config(spec: dict[str, Any]) -> dict[str, Any]:
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from ..telemetry import EnergyMeter, measure

    for module in ("config", "distiller", "quantization"):  # _build's, imported before the RSS after imports
        importlib.import_module(f"..{module}", __package__)
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

    d, teacher_params, weight_bytes, build_seconds = _build(spec, device, mode, layers)

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
