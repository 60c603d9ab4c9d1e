"""The GPU suite's first part: each backend's meta-gradient on the device against the CPU's."""

from __future__ import annotations

from typing import Any

import torch

from ..config import DistillConfig
from .gpu_model import CORRECT_TOL, SHAPES, llama_config, random_batch, random_model


def _tiny_meta_gradient(backend: str, device: torch.device, dtype: torch.dtype, attn: str) -> list[torch.Tensor]:
    """The meta-gradient of one fixed problem (tiny Llama teacher and student, non-zero LoRA B) on
    ``device``, on the CPU afterwards."""
    from ..distiller import MetaDistiller

    # built in float64 and cast, so that the float32 problem holds the same numbers (rounded)
    teacher = random_model(llama_config("tiny", attn), torch.device("cpu"), torch.float64, seed=1).to(dtype)
    student = random_model(llama_config("tiny", attn, num_hidden_layers=1), torch.device("cpu"), torch.float64,
                           seed=2).to(dtype)
    cfg = DistillConfig(meta_update="lora", meta_grad=backend, pilot_lr=0.5, temperature=2.0, alpha=0.6,
                        teacher_grad_clip=None, progress=False, seed=0)
    d = MetaDistiller(teacher, student, cfg, device=device)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sorted(d.teacher.named_parameters()):
            if "lora_" in name:  # A and B: the same values in every dtype, B non-zero
                p.copy_((0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.dtype))
    batch = random_batch(SHAPES["tiny"]["vocab_size"], 6, 12, seed=4, device=device)
    quiz = random_batch(SHAPES["tiny"]["vocab_size"], 6, 12, seed=5, device=device)
    return [x.detach().double().cpu() for x in d.meta_gradient(batch, quiz).phi_grads]


def _rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    g, w = torch.cat([x.reshape(-1) for x in got]), torch.cat([x.reshape(-1) for x in want])
    return float((g - w).norm() / w.norm().clamp_min(1e-300))


def correctness(device: torch.device, backends: list[str]) -> list[dict[str, Any]]:
    """Each backend on ``device`` against the same backend on the CPU (float64), and finite_diff with
    SDPA in float32 on ``device`` against the float64 CPU reference."""
    rows = []
    for backend in backends:
        attn = "sdpa" if backend == "finite_diff" else "eager"
        ref = _tiny_meta_gradient(backend, torch.device("cpu"), torch.float64, attn)
        got = _tiny_meta_gradient(backend, device, torch.float64, attn)
        err = _rel_err(got, ref)
        rows.append({"backend": backend, "check": "float64", "attention": attn, "rel_err": err,
                     "tol": CORRECT_TOL["float64"], "ok": err <= CORRECT_TOL["float64"]})
        if backend == "finite_diff":
            got32 = _tiny_meta_gradient(backend, device, torch.float32, "sdpa")
            err32 = _rel_err(got32, ref)
            rows.append({"backend": backend, "check": "float32 sdpa", "attention": "sdpa (default)", "rel_err": err32,
                         "tol": CORRECT_TOL["float32 sdpa"], "ok": err32 <= CORRECT_TOL["float32 sdpa"]})
    return rows
