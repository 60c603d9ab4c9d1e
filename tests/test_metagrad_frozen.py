"""Students with frozen parameters: θ is the trainable subset, and every meta-gradient backend
steps exactly that subset (pilot="reuse": by SGD on L_in) and computes the meta-gradient of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metakd import DistillConfig, MetaDistiller
from metakd.metagrad import BACKENDS
from metakd.models import find_layer_list, tiny_classifier

from .conftest import make_batch
from .test_metagrad_backends import _reference_lora_student
from .test_metagrad_reference import _max_rel_err, _randomize_lora_b

# finite_diff carries its O(fd_epsilon²) truncation error: measured 5e-7..1.2e-4 here with the default
# fd_epsilon=1e-3 (GPT-2 the larger), 100x less at fd_epsilon=1e-4; a misapplied update errs by ~1.
TOLERANCE = {"higher": 1e-6, "jvp": 1e-6, "finite_diff": 5e-4}
STUDENT_LR, PILOT_LR, T, ALPHA = 0.3, 0.5, 2.0, 0.6


def _frozen_modules(student: torch.nn.Module, pattern: str) -> list[torch.nn.Module]:
    blocks = find_layer_list(student)[1]
    if pattern == "embeddings":
        return [student.get_input_embeddings()]
    if pattern == "middle_block":
        return [blocks[len(blocks) // 2]]
    top = [blocks[-1]]  # and what sits on the last block: BERT's pooler, GPT-2's final LayerNorm
    base = getattr(student, "bert", None) or student.transformer
    return top + [getattr(base, "pooler", None) or base.ln_f]


def _distiller(arch: str, backend: str, pattern: str) -> MetaDistiller:
    teacher = tiny_classifier(arch, num_layers=3, hidden_size=16, seed=1, dtype=torch.float64)
    student = tiny_classifier(arch, num_layers=3, hidden_size=16, seed=2, dtype=torch.float64)
    for module in _frozen_modules(student, pattern):
        module.requires_grad_(False)
    cfg = DistillConfig(meta_update="lora", meta_grad=backend, pilot="reuse", temperature=T, alpha=ALPHA,
                        pilot_lr=PILOT_LR, student_optimizer="sgd", student_lr=STUDENT_LR, weight_decay=0.0,
                        teacher_optimizer="sgd", teacher_lr=1.0, teacher_grad_clip=None, progress=False)
    d = MetaDistiller(teacher, student, cfg)
    _randomize_lora_b(d.teacher)
    return d


def _sgd_step_on_inner_loss(d: MetaDistiller, batch) -> dict[str, torch.Tensor]:
    """θ − student_lr·∇_θ L_in(θ, z_T) for the trainable θ, written from the definition."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        z_t = d.teacher(**inputs).logits
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in d.student.named_parameters() if p.requires_grad}
    z_s = functional_call(d.student, theta, (), inputs).logits
    p_t = F.softmax(z_t / T, -1)
    kl = (p_t * (F.log_softmax(z_t / T, -1) - F.log_softmax(z_s / T, -1))).sum(-1).mean()
    loss = ALPHA * T * T * kl + (1 - ALPHA) * F.cross_entropy(z_s, batch["labels"])
    grads = torch.autograd.grad(loss, list(theta.values()))
    return {n: p.detach() - STUDENT_LR * g for (n, p), g in zip(theta.items(), grads)}


@pytest.mark.parametrize("pattern", ["embeddings", "middle_block", "top_block"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_frozen_student_parameters(arch, backend, pattern):
    d = _distiller(arch, backend, pattern)
    before = {n: p.detach().clone() for n, p in d.student.named_parameters()}
    frozen = [n for n, p in d.student.named_parameters() if not p.requires_grad]
    assert frozen and len(frozen) < len(before)
    batch, quiz = make_batch(0), make_batch(1)
    want_student = _sgd_step_on_inner_loss(d, batch)
    want_meta = _reference_lora_student(d, batch, quiz)
    phi_before = [p.detach().clone() for p in d.phi]
    d.step(batch, quiz)
    after = dict(d.student.named_parameters())
    for name in frozen:
        assert torch.equal(after[name].detach(), before[name]), f"{backend} moved the frozen {name}"
    assert want_student.keys() == {n for n in after if n not in frozen}
    for name, want in want_student.items():
        assert not torch.equal(want, before[name]), name  # every trainable tensor is meant to move
        torch.testing.assert_close(after[name].detach(), want, rtol=1e-10, atol=1e-12,
                                   msg=lambda m, name=name: f"{backend}, {name}: {m}")
    moved = [p.detach() - b for p, b in zip(d.phi, phi_before)]
    assert max(float(w.abs().max()) for w in want_meta) > 0
    assert _max_rel_err(moved, [-w for w in want_meta]) <= TOLERANCE[backend]
