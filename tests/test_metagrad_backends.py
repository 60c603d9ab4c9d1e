"""The first-order meta-gradient backends (jvp, finite_diff) against the higher reference, and what
MetaDistiller does around every backend: replay of dropout masks, LoRA-only updates, refused
combinations, teacher activation checkpointing and the phase timer.

The exactness of each backend against an independent double-backward reference is in
test_metagrad_reference.py; here the backends are compared with each other on the same problem.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch

from metakd import ConfigError, DistillConfig, MetaDistiller
from metakd.metagrad import MetaProblem, MetaResult, meta_gradient
from metakd.metagrad.base import RngReplay
from metakd.models import LORA_MARKER, find_layer_list, tiny_classifier
from metakd.telemetry import PhaseTimer

from .conftest import make_batch
from .test_metagrad_reference import _max_rel_err, _randomize_lora_b

BACKENDS = ("higher", "jvp", "finite_diff")
FIRST_ORDER = ("jvp", "finite_diff")
FEATURES = {0: 0, 1: 2}  # not the last block (GPT-2's final LayerNorm); see test_metagrad_reference
META_PHASES = ("teacher_forward", "pilot", "quiz", "directional_derivative", "teacher_backward", "teacher_step",
               "student_step")


def _distiller(arch: str, backend: str = "higher", *, dtype=torch.float64, mode: str = "lora",
               student_dropout: float = 0.0, timer=None, **overrides) -> MetaDistiller:
    """Tiny teacher (3 blocks) and student (2 blocks); plain-SGD teacher with lr 1 and no clipping,
    so the teacher moves by exactly −∇_φ L_quiz; LoRA adapters all non-zero."""
    teacher = tiny_classifier(arch, num_layers=3, hidden_size=16, seed=1, dtype=dtype)
    student = tiny_classifier(arch, num_layers=2, hidden_size=16, seed=2, dtype=dtype, dropout=student_dropout)
    settings = dict(meta_update=mode, meta_grad=backend, temperature=2.0, alpha=0.6, pilot_lr=0.5,
                    teacher_optimizer="sgd", teacher_lr=1.0, teacher_grad_clip=None, progress=False)
    settings.update(overrides)
    if settings.get("feature_layers"):
        settings.setdefault("feature_weight", 0.7)
    d = MetaDistiller(teacher, student, DistillConfig(**settings), timer=timer)
    if mode == "lora":
        _randomize_lora_b(d.teacher)
    return d


def _problem(d: MetaDistiller, batch, quiz, **overrides) -> MetaProblem:
    """The MetaProblem a meta-step of ``d`` solves, with a fresh teacher forward: the teacher
    backward frees the teacher's graph, so every backend call needs its own problem."""
    d.teacher.eval()
    d.student_module.train()
    with torch.enable_grad():
        t_out = d.teacher_outputs(batch)
    cfg = d.config
    fields = dict(student=d.student_module, params=d.student_params, objective=d.objective, teacher_out=t_out,
                  batch=batch, quiz_batch=quiz, phi=d.phi, pilot_lr=cfg.pilot_lr, unroll_steps=cfg.unroll_steps,
                  pilot_optimizer=cfg.pilot_optimizer, fd_epsilon=cfg.fd_epsilon)
    fields.update(overrides)
    return MetaProblem(**fields)


def _solve(backend: str, d: MetaDistiller, batch, quiz, **overrides) -> MetaResult:
    return meta_gradient(backend, _problem(d, batch, quiz, **overrides))


def _teacher_move(d: MetaDistiller, batch, quiz) -> list[torch.Tensor]:
    """φ_after − φ_before over one ``step``."""
    before = [p.detach().clone() for p in d.phi]
    d.step(batch, quiz)
    return [p.detach() - b for p, b in zip(d.phi, before)]


def _largest(tensors) -> float:
    return max(float(t.abs().max()) for t in tensors)


# ---------------------------------------------------------------------------- agreement with higher
# jvp is exact for one SGD pilot step: in float32 it differs from higher by rounding alone
# (measured <= 2.3e-7 relative over both archs, lora/full, three batches).
JVP_FLOAT32_TOL = 1e-4
# finite_diff in float32: the central difference divides float32 rounding of the two shifted
# student forwards and of ∂L_in/∂z_T at θ ± εg (unit roundoff 6e-8, losses ~1) by a step of length
# fd_epsilon = 1e-3 in parameter space, so relative errors of ~1e-4 are expected, more where the
# difference cancels. Measured 1e-5..7.5e-4 in lora mode and up to 1.5e-3 in full mode (both
# archs, with and without feature layers, three batch pairs); the O(fd_epsilon²) truncation part
# is ~1e-5 (float64). 5e-3 leaves 3x margin and still fails on a wrong sign, scale or missing term
# (relative errors ~1), and on fd_epsilon=1e-4 or 1e-2 (measured up to 1.3e-2 and 8e-3).
FD_FLOAT32_TOL = 5e-3


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_float32_first_order_backends_agree_with_higher(arch, mode):
    d = _distiller(arch, dtype=torch.float32, mode=mode)
    for seed in (0, 10):
        batch, quiz = make_batch(seed), make_batch(seed + 1)
        want = _solve("higher", d, batch, quiz).phi_grads
        assert all(w.dtype == torch.float32 for w in want)
        assert _largest(want) > 0, "higher's meta-gradient is identically zero"
        jvp = _solve("jvp", d, batch, quiz).phi_grads
        fd = _solve("finite_diff", d, batch, quiz).phi_grads
        assert [g.shape for g in jvp] == [g.shape for g in fd] == [w.shape for w in want]
        assert _max_rel_err(jvp, want) <= JVP_FLOAT32_TOL
        assert _max_rel_err(fd, want) <= FD_FLOAT32_TOL


@pytest.mark.parametrize("features", [None, FEATURES], ids=["logits", "features"])
@pytest.mark.parametrize("backend", FIRST_ORDER)
def test_losses_and_pilot_gradients_equal_highers(arch, backend, features):
    """inner_loss, quiz_loss and pilot_grads (the real step of pilot='reuse') do not depend on
    the backend; computing a meta-gradient changes neither θ nor φ."""
    d = _distiller(arch, feature_layers=features)
    batch, quiz = make_batch(0), make_batch(1)
    theta = [p.detach().clone() for p in d.student_params]
    phi = [p.detach().clone() for p in d.phi]
    want = _solve("higher", d, batch, quiz)
    got = _solve(backend, d, batch, quiz)
    assert math.isfinite(want.inner_loss) and want.inner_loss > 0
    assert math.isfinite(want.quiz_loss) and want.quiz_loss > 0
    assert got.inner_loss == pytest.approx(want.inner_loss, rel=1e-12)
    assert got.quiz_loss == pytest.approx(want.quiz_loss, rel=1e-12)
    assert len(got.pilot_grads) == len(want.pilot_grads) == len(d.student_params)
    assert _largest(want.pilot_grads) > 0
    for g, w, p in zip(got.pilot_grads, want.pilot_grads, d.student_params):
        assert g.shape == w.shape == p.shape
        assert not g.requires_grad
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    assert len(got.phi_grads) == len(d.phi)
    assert all(torch.equal(p, b) for p, b in zip(d.student_params, theta)), "a backend changed θ"
    assert all(torch.equal(p, b) for p, b in zip(d.phi, phi)), "a backend changed φ"
    assert all(p.grad is None for p in d.student_params), "a backend left .grad on θ"


# ---------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("backend,tol", [("jvp", 1e-6), ("finite_diff", 1e-4)])
def test_student_dropout_masks_are_replayed(arch, backend, tol, monkeypatch):
    """With student dropout the directional derivative must see the pilot forward's masks: from
    the same seed the backend then matches higher as closely as without dropout."""
    batch, quiz = make_batch(0), make_batch(1)

    def move(name: str, seed: int) -> list[torch.Tensor]:
        d = _distiller(arch, name, student_dropout=0.2, seed=seed)  # the seed of the step's dropout masks
        g = torch.Generator().manual_seed(6)
        with torch.no_grad():  # the same adapters whatever the seed
            for p in d.phi:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        out = _teacher_move(d, batch, quiz)
        assert d.student_module.training, "MetaDistiller runs the student in train mode"
        return out

    want = move("higher", 0)
    assert _largest(want) > 0
    assert _max_rel_err(move(backend, 0), want) <= tol
    # Dropout is really active: another seed draws other masks and another meta-gradient
    # (measured 2e-2 relative for BERT, 0.45 for GPT-2).
    assert _max_rel_err(move("higher", 1), want) > 1e-3
    # And the replay is what makes the backend agree: without it the JVP / difference forwards draw
    # fresh masks (measured 3e-2..16 relative).
    monkeypatch.setattr(RngReplay, "replay", lambda self: nullcontext())
    assert _max_rel_err(move(backend, 0), want) > 1e-3


# ---------------------------------------------------------------------------- LoRA mode
@pytest.mark.parametrize("backend", FIRST_ORDER)
def test_lora_mode_moves_only_adapters(arch, backend):
    d = _distiller(arch, backend, mode="lora")
    before = {n: p.detach().clone() for n, p in d.teacher.named_parameters()}
    student_before = [p.detach().clone() for p in d.student_params]
    for i in range(3):
        d.step(make_batch(2 * i), make_batch(2 * i + 1))
    after = {n: p.detach() for n, p in d.teacher.named_parameters()}
    adapters = [n for n in after if LORA_MARKER in n]
    assert adapters and len(adapters) < len(after)
    for name in after:
        if LORA_MARKER not in name:
            assert torch.equal(after[name], before[name]), f"base weight {name} changed in lora mode"
    unmoved = [n for n in adapters if torch.equal(after[n], before[n])]
    assert not unmoved, f"adapters did not move: {unmoved}"
    assert any(not torch.equal(p, b) for p, b in zip(d.student_params, student_before))


# ---------------------------------------------------------------------------- refused combinations
@pytest.mark.parametrize("backend", FIRST_ORDER)
@pytest.mark.parametrize("combo", [{"unroll_steps": 2}, {"pilot_optimizer": "adam"}], ids=["unroll2", "adam"])
def test_config_refuses_what_only_higher_does(backend, combo):
    with pytest.raises(ConfigError, match="higher"):
        DistillConfig(meta_grad=backend, **combo)
    DistillConfig(meta_grad="higher", **combo)  # the reference backend takes it
    # A config changed after construction is checked again when the distiller is built.
    cfg = DistillConfig(meta_grad=backend)
    for key, value in combo.items():
        setattr(cfg, key, value)
    with pytest.raises(ConfigError, match="higher"):
        MetaDistiller(tiny_classifier(seed=1), tiny_classifier(seed=2), cfg)


@pytest.mark.parametrize("backend", FIRST_ORDER)
@pytest.mark.parametrize("combo", [{"unroll_steps": 2}, {"pilot_optimizer": "adam"}], ids=["unroll2", "adam"])
def test_backend_refuses_what_only_higher_does(backend, combo):
    d = _distiller("bert", "higher")
    batch, quiz = make_batch(0), make_batch(1)
    with pytest.raises(ValueError, match="higher"):
        _solve(backend, d, batch, quiz, **combo)
    assert _largest(_solve("higher", d, batch, quiz, **combo).phi_grads) > 0


@pytest.mark.parametrize("value", [0.0, -1e-3, float("nan"), float("inf")])
def test_fd_epsilon_must_be_positive(value):
    with pytest.raises(ConfigError, match="fd_epsilon"):
        DistillConfig(meta_grad="finite_diff", fd_epsilon=value)
    d = _distiller("bert", "finite_diff")
    with pytest.raises(ValueError, match="fd_epsilon"):
        _solve("finite_diff", d, make_batch(0), make_batch(1), fd_epsilon=value)


def test_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="meta_grad"):
        DistillConfig(meta_grad="reverse")
    d = _distiller("bert")
    with pytest.raises(ValueError, match="unknown meta_grad backend 'reverse'"):
        _solve("reverse", d, make_batch(0), make_batch(1))


# ---------------------------------------------------------------------------- teacher checkpointing
def _count_block_forwards(d: MetaDistiller):
    """Wrap each teacher block's bound forward in a counter set as an instance attribute (which
    checkpointed_blocks must keep as the original and put back)."""
    blocks = list(find_layer_list(d.teacher)[1])
    counts = [0] * len(blocks)
    wrappers = []
    for i, block in enumerate(blocks):
        original = block.forward

        def counting(*args, _i=i, _original=original, **kwargs):
            counts[_i] += 1
            return _original(*args, **kwargs)

        block.forward = counting
        wrappers.append(counting)
    return blocks, counts, wrappers


# (backend, pilot, forwards of each block per meta-step without checkpointing). 'restore' adds a
# no-grad teacher forward for the real student step, which is never checkpointed.
CHECKPOINT_CASES = [("higher", "reuse", 1), ("jvp", "reuse", 1), ("finite_diff", "reuse", 1), ("jvp", "restore", 2)]


@pytest.mark.parametrize("backend,pilot,plain_forwards", CHECKPOINT_CASES,
                         ids=[f"{b}-{p}" for b, p, _ in CHECKPOINT_CASES])
def test_teacher_checkpointing_recomputes_and_changes_nothing(arch, backend, pilot, plain_forwards):
    batch, quiz = make_batch(0), make_batch(1)
    moves, counts_by_setting = {}, {}
    for checkpointing in (False, True):
        d = _distiller(arch, backend, pilot=pilot, teacher_checkpointing=checkpointing, feature_layers=FEATURES)
        use_cache = getattr(d.teacher.config, "use_cache", None)
        blocks, counts, wrappers = _count_block_forwards(d)
        moves[checkpointing] = _teacher_move(d, batch, quiz)
        counts_by_setting[checkpointing] = counts
        # the checkpoint wrappers are gone: each block's forward is the counting wrapper again
        assert all(vars(b)["forward"] is w for b, w in zip(blocks, wrappers))
        assert getattr(d.teacher.config, "use_cache", None) == use_cache
        for block in blocks:
            del block.forward
        assert not any("forward" in vars(b) for b in blocks)
    assert counts_by_setting[False] == [plain_forwards] * len(blocks)
    # one recompute of every block in the meta backward
    assert counts_by_setting[True] == [plain_forwards + 1] * len(blocks)
    assert _largest(moves[False]) > 0
    assert _max_rel_err(moves[True], moves[False]) <= 1e-10


def test_teacher_checkpointing_leaves_no_wrapper_behind(arch):
    """Without an instance-level forward of its own, a block gets its class forward back, and later
    steps (meta and plain) run unwrapped."""
    d = _distiller(arch, "jvp", teacher_checkpointing=True, meta_every=2)
    blocks = list(find_layer_list(d.teacher)[1])
    for i in range(3):
        d.step(make_batch(2 * i), make_batch(2 * i + 1))
        assert not any("forward" in vars(b) for b in blocks)


# ---------------------------------------------------------------------------- phase timer
@pytest.mark.parametrize("backend", BACKENDS)
def test_phase_timer_reports_every_phase_of_a_meta_step(backend):
    timer = PhaseTimer()
    d = _distiller("bert", backend, timer=timer, meta_every=2)
    meta = d.step(make_batch(0), make_batch(1))
    assert meta["meta"] == 1.0
    for phase in META_PHASES:
        assert meta.get(f"time_{phase}", 0.0) > 0, f"no time for {phase}"
    assert {k for k in meta if k.startswith("time_")} == {f"time_{p}" for p in META_PHASES}
    counts = timer.counts()
    assert counts.pop("teacher_forward") == 2  # the meta-step's and pilot='restore''s
    assert counts == {p: 1 for p in META_PHASES if p != "teacher_forward"}
    # the next step is a plain KD step: the timer starts afresh and sees only its phases
    plain = d.step(make_batch(2), make_batch(3))
    assert plain["meta"] == 0.0
    assert {k for k in plain if k.startswith("time_")} == {"time_teacher_forward", "time_student_step"}
    assert plain["time_teacher_forward"] > 0 and plain["time_student_step"] > 0


def test_phase_timer_in_plain_mode():
    d = _distiller("bert", mode="none", timer=PhaseTimer())
    metrics = d.step(make_batch(0))
    assert {k for k in metrics if k.startswith("time_")} == {"time_teacher_forward", "time_student_step"}
    assert metrics["time_teacher_forward"] > 0 and metrics["time_student_step"] > 0


@pytest.mark.parametrize("mode", ["lora", "none"])
def test_no_timer_no_phase_times(mode):
    d = _distiller("bert", "jvp", mode=mode)
    metrics = d.step(make_batch(0), make_batch(1))
    assert metrics["meta"] == (1.0 if mode == "lora" else 0.0)
    assert not [k for k in metrics if k.startswith("time_")]


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
@pytest.mark.parametrize("backend,tol", [("jvp", 1e-6), ("finite_diff", 1e-4)])
def test_first_order_backends_agree_with_higher_for_every_divergence(arch, divergence, backend, tol):
    """The backends differentiate whatever L_in the config defines: reverse KL and JSD included."""
    batch, quiz = make_batch(0), make_batch(1)
    want = _teacher_move(_distiller(arch, "higher", divergence=divergence, jsd_beta=0.3), batch, quiz)
    got = _teacher_move(_distiller(arch, backend, divergence=divergence, jsd_beta=0.3), batch, quiz)
    assert _largest(want) > 0
    assert _max_rel_err(got, want) <= tol


def _reference_lora_student(d: MetaDistiller, batch, quiz) -> list[torch.Tensor]:
    """∇_φ CE(S_θ'(x_q)) with θ' = θ − η∇_θ L_in and θ = the student's trainable parameters only,
    by functional_call and create_graph (no metakd backend code)."""
    import torch.nn.functional as F
    from torch.func import functional_call

    cfg, student = d.config, d.student
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    z_t = d.teacher(**inputs).logits
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in student.named_parameters() if p.requires_grad}
    z_s = functional_call(student, theta, (), inputs).logits
    t = cfg.temperature
    p_t = F.softmax(z_t / t, -1)
    kl = (p_t * (F.log_softmax(z_t / t, -1) - F.log_softmax(z_s / t, -1))).sum(-1).mean()
    loss = cfg.alpha * t * t * kl + (1 - cfg.alpha) * F.cross_entropy(z_s, batch["labels"])
    grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
    theta = {n: p - cfg.pilot_lr * g for (n, p), g in zip(theta.items(), grads)}
    q = functional_call(student, theta, (), {k: quiz[k] for k in ("input_ids", "attention_mask")}).logits
    return list(torch.autograd.grad(F.cross_entropy(q, quiz["labels"]), d.phi))


@pytest.mark.parametrize("backend,tol", [("jvp", 1e-6), ("finite_diff", 1e-4)])
def test_lora_student_trains_adapters_and_head_only(arch, backend, tol):
    """student_lora=True (LLM-Neo): θ is the student's q/k/v adapters and its head; the meta-gradient
    is exact against a reference, and the student's base weights stay bit-identical."""
    batch, quiz = make_batch(0), make_batch(1)
    d = _distiller(arch, backend, student_lora=True)
    names = [n for n, p in d.student.named_parameters() if p.requires_grad]
    assert names and all(LORA_MARKER in n or ".classifier." in n or ".score." in n for n in names)
    assert any(".classifier." in n or ".score." in n for n in names)
    frozen = {n: p.detach().clone() for n, p in d.student.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in d.student.named_parameters() if p.requires_grad}
    want = _reference_lora_student(d, batch, quiz)
    move = _teacher_move(d, batch, quiz)
    assert _largest(want) > 0
    assert _max_rel_err(move, [-w for w in want]) <= tol
    d.step(make_batch(2), make_batch(3))
    after = dict(d.student.named_parameters())
    assert all(torch.equal(after[n].detach(), v) for n, v in frozen.items())
    assert any(not torch.equal(after[n].detach(), v) for n, v in trained.items())


def test_lora_student_with_features_agrees_across_first_order_backends(arch):
    batch, quiz = make_batch(0), make_batch(1)
    jvp = _teacher_move(_distiller(arch, "jvp", student_lora=True, feature_layers=FEATURES), batch, quiz)
    fd = _teacher_move(_distiller(arch, "finite_diff", student_lora=True, feature_layers=FEATURES), batch, quiz)
    assert _largest(jvp) > 0 and _max_rel_err(fd, jvp) <= 1e-4


def test_lora_student_with_higher_is_refused_naming_the_alternatives():
    with pytest.raises(ConfigError, match="jvp"):
        DistillConfig(student_lora=True, meta_grad="higher", meta_update="lora")
    DistillConfig(student_lora=True, meta_grad="higher", meta_update="none")  # plain KD needs no backend
