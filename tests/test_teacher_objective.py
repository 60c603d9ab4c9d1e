"""The teacher's objective against an independent float64 reference.

    L_T(φ) = meta_weight·L_quiz(θ'(φ)) + teacher_ce_weight·CE(T_φ(x), y)
             + teacher_student_weight·T²·KL(p_S ‖ p_T) + teacher_anchor_weight·T²·KL(p_T0 ‖ p_T)

The reference is written here from that definition with plain autograd: a fresh teacher forward
attached to φ, an explicit pilot step θ' = θ − η∇_θ L_in (create_graph=True), the quiz loss at θ',
the extra terms on the same teacher logits, p_S the student at θ, and p_T0 a separately built copy
of the initial teacher (the LoRA adapters start with B = 0, so the initial LoRA teacher is the base
model). It shares no code with metakd's backends or ``metakd.teacher_objective``. With an SGD
teacher optimizer at lr 1 and no clipping the applied teacher change is −∇_φ L_T.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metakd import DistillConfig, MetaDistiller
from metakd.models import tiny_causal_lm, tiny_classifier

from .conftest import make_batch

T, ALPHA, PILOT_LR = 2.0, 0.6, 0.5


# ---------------------------------------------------------------------------- models and batches
def lm_batch(seed: int, batch: int = 4, length: int = 8, vocab: int = 64, pad_rows: int = 2, pad: int = 3):
    """Right-padded LM blocks: labels are the ids, -100 on padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[:pad_rows, length - pad:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def build_teacher(task: str) -> torch.nn.Module:
    """The teacher as given (a fresh build every time: the reference's p_T0)."""
    if task == "causal_lm":
        return tiny_causal_lm("gpt2", num_layers=2, seed=1, dtype=torch.float64)
    return tiny_classifier("bert", num_layers=3, hidden_size=16, seed=1, dtype=torch.float64)


def build_student(task: str) -> torch.nn.Module:
    if task == "causal_lm":
        return tiny_causal_lm("gpt2", num_layers=1, seed=2, dtype=torch.float64)
    return tiny_classifier("bert", num_layers=2, hidden_size=16, seed=2, dtype=torch.float64)


def batches(task: str):
    return (lm_batch(0), lm_batch(1)) if task == "causal_lm" else (make_batch(0), make_batch(1))


def move_teacher_off_its_start(d: MetaDistiller, mode: str) -> None:
    """LoRA starts with B = 0 (p_T = p_T0: a zero anchor gradient, and ∂/∂A vanishes); full mode
    starts at the given weights. Move φ so every term has a nonzero gradient."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in d.teacher.named_parameters():
            if not p.requires_grad:
                continue
            if mode == "lora" and "lora_B" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif mode == "full":
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---------------------------------------------------------------------------- the reference
def _inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask")}


def _kl_rows(target_logits, logits):
    """KL(softmax(target/T) ‖ softmax(logits/T)) per row of [..., C] logits."""
    log_p = F.log_softmax(target_logits / T, -1)
    return (log_p.exp() * (log_p - F.log_softmax(logits / T, -1))).sum(-1)


def _soft_mean(rows, batch, task):
    """Mean over rows (classification) or over the real positions (causal LM)."""
    if task == "causal_lm":
        return rows[batch["attention_mask"].bool()].mean()
    return rows.mean()


def _hard_ce(logits, batch, task):
    if task == "causal_lm":
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                               ignore_index=-100)
    return F.cross_entropy(logits, batch["labels"])


def reference_teacher_gradient(teacher, initial_teacher, student, batch, quiz, phi_names, task, *,
                               meta_weight, ce, student_w, anchor):
    """∇_φ L_T by plain double-backward autograd, from the definition."""
    named = dict(teacher.named_parameters())
    phi = [named[n] for n in phi_names]
    t = teacher(**_inputs(batch)).logits                                  # attached to φ
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in student.named_parameters()}
    s = functional_call(student, theta, args=(), kwargs=_inputs(batch)).logits
    inner = ALPHA * T * T * _soft_mean(_kl_rows(t, s), batch, task) + (1 - ALPHA) * _hard_ce(s, batch, task)
    grads = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
    theta_prime = {n: p - PILOT_LR * g for (n, p), g in zip(theta.items(), grads)}
    q = functional_call(student, theta_prime, args=(), kwargs=_inputs(quiz)).logits
    total = meta_weight * _hard_ce(q, quiz, task)
    total = total + ce * _hard_ce(t, batch, task)
    total = total + student_w * T * T * _soft_mean(_kl_rows(s.detach(), t), batch, task)
    with torch.no_grad():
        t0 = initial_teacher(**_inputs(batch)).logits
    total = total + anchor * T * T * _soft_mean(_kl_rows(t0, t), batch, task)
    out = torch.autograd.grad(total, phi, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(out, phi)]


def max_rel_err(got, want):
    num = max(float((a - b).abs().max()) for a, b in zip(got, want))
    den = max(float(b.abs().max()) for b in want)
    return num / den


# ---------------------------------------------------------------------------- the cases
TERMS = {  # (meta_weight, teacher_ce_weight, teacher_student_weight, teacher_anchor_weight)
    "ce": (0.0, 0.8, 0.0, 0.0),
    "student": (0.0, 0.0, 0.9, 0.0),
    "anchor": (0.0, 0.0, 0.0, 1.3),
    "all": (0.7, 0.8, 0.9, 1.3),
}
TOL = {"higher": 1e-6, "jvp": 1e-6, "finite_diff": 1e-4}

# the full cross product for jvp; one case each (all terms, a mix of the other axes) for the others
CASES = [("jvp", terms, mode, task, layers)
         for terms in TERMS for mode in ("lora", "full") for task in ("classification", "causal_lm")
         for layers in ("all", "top:1")]
CASES += [("higher", "all", "lora", "classification", "all"), ("higher", "all", "full", "causal_lm", "top:1"),
          ("higher", "student", "lora", "causal_lm", "all"),
          ("finite_diff", "all", "full", "classification", "top:1"), ("finite_diff", "all", "lora", "causal_lm", "all"),
          ("finite_diff", "student", "lora", "classification", "all")]


def make_distiller(backend, terms, mode, task, layers, **changes):
    mw, ce, sw, aw = TERMS[terms]
    cfg = DistillConfig(task=task, meta_update=mode, meta_grad=backend, temperature=T, alpha=ALPHA, pilot_lr=PILOT_LR,
                        teacher_optimizer="sgd", teacher_lr=1.0, teacher_grad_clip=None, weight_decay=0.0,
                        meta_weight=mw, teacher_ce_weight=ce, teacher_student_weight=sw, teacher_anchor_weight=aw,
                        teacher_layers=layers, lm_chunk_size=5, progress=False, **changes)
    d = MetaDistiller(build_teacher(task), build_student(task), cfg)
    move_teacher_off_its_start(d, mode)
    return d


@pytest.mark.parametrize("backend,terms,mode,task,layers", CASES,
                         ids=["-".join(c) for c in CASES])
def test_teacher_moves_by_minus_the_gradient_of_its_objective(backend, terms, mode, task, layers):
    d = make_distiller(backend, terms, mode, task, layers)
    batch, quiz = batches(task)
    phi_names = [n for n, p in d.teacher.named_parameters() if p.requires_grad]
    assert len(phi_names) == len(d.phi) > 0
    mw, ce, sw, aw = TERMS[terms]
    want = reference_teacher_gradient(d.teacher, build_teacher(task), d.student, batch, quiz, phi_names, task,
                                      meta_weight=mw, ce=ce, student_w=sw, anchor=aw)
    assert max(float(w.abs().max()) for w in want) > 1e-8, "the reference gradient is zero: the test could not fail"
    before = [p.detach().clone() for p in d.phi]
    metrics = d.step(batch, quiz)
    assert metrics["meta"] == 1.0 and metrics["skipped"] == 0.0
    moved = [after.detach() - b for after, b in zip(d.phi, before)]
    err = max_rel_err(moved, [-w for w in want])
    assert err <= TOL[backend], f"relative error {err:.2e}"
    # each active term is reported by name, an inactive one is not
    for name, weight in (("teacher_ce", ce), ("teacher_student_kl", sw), ("teacher_anchor_kl", aw)):
        assert (name in metrics) == (weight > 0)


def test_each_term_changes_the_teacher_gradient():
    """The reference is sensitive to every term: dropping any weight moves ∇_φ L_T well beyond the
    tolerances above (so a backend that lost a term would fail the comparison)."""
    task, mode = "classification", "lora"
    d = make_distiller("jvp", "all", mode, task, "all")
    batch, quiz = batches(task)
    names = [n for n, p in d.teacher.named_parameters() if p.requires_grad]
    weights = dict(zip(("meta_weight", "ce", "student_w", "anchor"), TERMS["all"]))
    full = reference_teacher_gradient(d.teacher, build_teacher(task), d.student, batch, quiz, names, task, **weights)
    for dropped in weights:
        part = reference_teacher_gradient(d.teacher, build_teacher(task), d.student, batch, quiz, names, task,
                                          **{**weights, dropped: 0.0})
        assert max_rel_err(part, full) > 1e-3, dropped


def test_meta_gradient_reports_the_same_gradient_as_the_step():
    """``MetaDistiller.meta_gradient`` (no stepping) returns ∇_φ L_T itself, terms included."""
    task = "causal_lm"
    d = make_distiller("jvp", "all", "lora", task, "top:1")
    batch, quiz = batches(task)
    names = [n for n, p in d.teacher.named_parameters() if p.requires_grad]
    want = reference_teacher_gradient(d.teacher, build_teacher(task), d.student, batch, quiz, names, task,
                                      **dict(zip(("meta_weight", "ce", "student_w", "anchor"), TERMS["all"])))
    result = d.meta_gradient(batch, quiz)
    assert max_rel_err(result.phi_grads, want) <= 1e-6
    assert set(result.terms) == {"teacher_ce", "teacher_student_kl", "teacher_anchor_kl"}
    assert all(v > 0 for v in result.terms.values())


def test_the_anchor_is_zero_at_the_start_of_a_lora_run():
    """Fresh adapters (B = 0) are the teacher as given: the anchor term and its gradient are 0, so a
    pure anchor objective leaves the teacher where it is."""
    task = "classification"
    cfg = DistillConfig(meta_update="lora", meta_grad="jvp", teacher_optimizer="sgd", teacher_lr=1.0,
                        teacher_grad_clip=None, meta_weight=0.0, teacher_anchor_weight=1.0, pilot_lr=PILOT_LR,
                        progress=False)
    d = MetaDistiller(build_teacher(task), build_student(task), cfg)
    result = d.meta_gradient(*batches(task))
    assert result.terms["teacher_anchor_kl"] == pytest.approx(0.0, abs=1e-12)
    assert max(float(g.abs().max()) for g in result.phi_grads) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_a_meta_sub_batch_and_a_frozen_trunk_keep_every_term_exact(mode):
    """meta_batch_size takes the first rows of the batch for the meta-gradient, terms included (the
    anchor's initial-teacher forward too, over the frozen trunk's outputs on the whole batch)."""
    task = "classification"
    d = make_distiller("jvp", "all", mode, task, "top:1", meta_batch_size=4)
    batch, quiz = batches(task)
    first = {k: v[:4] for k, v in batch.items()}
    names = [n for n, p in d.teacher.named_parameters() if p.requires_grad]
    want = reference_teacher_gradient(d.teacher, build_teacher(task), d.student, first, quiz, names, task,
                                      **dict(zip(("meta_weight", "ce", "student_w", "anchor"), TERMS["all"])))
    before = [p.detach().clone() for p in d.phi]
    d.step(batch, quiz)
    assert max_rel_err([a.detach() - b for a, b in zip(d.phi, before)], [-w for w in want]) <= 1e-6
