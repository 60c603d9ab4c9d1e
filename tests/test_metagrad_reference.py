"""The `higher` meta-gradient against an independent double-backward reference.

The reference is written here from the definition, with torch.func.functional_call and
autograd.grad(create_graph=True), and shares no code with metakd's backends.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metakd import DistillConfig, MetaDistiller

from .conftest import make_batch


def reference_meta_gradient(teacher, student, batch, quiz, phi_names, *, T, alpha, lr, steps,
                            feature_layers=None, feature_weight=0.0):
    """∇_φ CE(S_θ'(x_q), y_q) with θ' = θ − lr·∇_θ L_in(θ, z_T(φ)), unrolled `steps` times."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    q_inputs = {k: quiz[k] for k in ("input_ids", "attention_mask")}
    named = dict(teacher.named_parameters())
    phi = [named[n] for n in phi_names]
    want_hidden = bool(feature_layers)
    t_out = teacher(**inputs, output_hidden_states=want_hidden)
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in student.named_parameters()}
    for _ in range(steps):
        s_out = functional_call(student, theta, args=(), kwargs={**inputs, "output_hidden_states": want_hidden})
        p_t = F.softmax(t_out.logits / T, -1)
        kl = (p_t * (F.log_softmax(t_out.logits / T, -1) - F.log_softmax(s_out.logits / T, -1))).sum(-1).mean()
        loss = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s_out.logits, batch["labels"])
        if want_hidden:
            m = batch["attention_mask"].double()
            terms = [(((s_out.hidden_states[s] - t_out.hidden_states[t]) ** 2).mean(-1) * m).sum() / m.sum()
                     for s, t in feature_layers.items()]
            loss = loss + feature_weight * sum(terms) / len(terms)
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        theta = {n: p - lr * g for (n, p), g in zip(theta.items(), grads)}
    q_logits = functional_call(student, theta, args=(), kwargs=q_inputs).logits
    quiz_loss = F.cross_entropy(q_logits, quiz["labels"])
    return torch.autograd.grad(quiz_loss, phi)


def _randomize_lora_b(teacher):
    # peft starts lora_B at zero, which makes ∂/∂A vanish; move it so every adapter is exercised.
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in teacher.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _max_rel_err(got, want):
    num = max(float((a - b).abs().max()) for a, b in zip(got, want))
    den = max(float(b.abs().max()) for b in want)
    return num / den


# Feature layers avoid the last block: metakd reads block outputs, while Transformers applies
# GPT-2's final LayerNorm to the last entry of `hidden_states`.
FEATURES = {0: 0, 1: 2}
# (backend, unroll steps, feature layers, max relative error). jvp is exact for one SGD pilot step
# (measured 1e-12..1e-16 in float64); finite_diff carries its O(fd_epsilon²) truncation error
# (measured <= ~1e-5 with the default fd_epsilon=1e-3). Only higher unrolls more than one step.
CASES = [
    ("higher", 1, None, 1e-6),
    ("higher", 2, None, 1e-6),
    ("higher", 1, FEATURES, 1e-6),
    ("jvp", 1, None, 1e-6),
    ("jvp", 1, FEATURES, 1e-6),
    ("finite_diff", 1, None, 1e-4),
    ("finite_diff", 1, FEATURES, 1e-4),
]


@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("backend,steps,features,tol", CASES,
                         ids=[f"{b}-{s}step-{'features' if f else 'logits'}" for b, s, f, _ in CASES])
def test_teacher_moves_by_exactly_minus_meta_gradient(tiny_pair, mode, backend, steps, features, tol):
    teacher, student = tiny_pair
    cfg = DistillConfig(
        meta_update=mode, meta_grad=backend, temperature=2.0, alpha=0.6, pilot_lr=0.5,
        unroll_steps=steps, teacher_optimizer="sgd", teacher_lr=1.0, teacher_grad_clip=None,
        feature_layers=features, feature_weight=0.7 if features else 0.0, progress=False,
    )
    d = MetaDistiller(teacher, student, cfg)
    if mode == "lora":
        _randomize_lora_b(d.teacher)
    batch, quiz = make_batch(0), make_batch(1)
    phi_names = [n for n, p in d.teacher.named_parameters() if p.requires_grad]
    want = reference_meta_gradient(d.teacher, d.student, batch, quiz, phi_names, T=2.0, alpha=0.6, lr=0.5,
                                   steps=steps, feature_layers=features, feature_weight=0.7)
    before = [p.detach().clone() for p in d.phi]
    d.step(batch, quiz)
    moved = [after.detach() - b for after, b in zip(d.phi, before)]
    assert len(moved) == len(want) > 0
    assert max(float(w.abs().max()) for w in want) > 0, "reference meta-gradient is identically zero"
    assert _max_rel_err(moved, [-w for w in want]) <= tol
