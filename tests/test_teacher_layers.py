"""The cheaper meta-step levers against the independent double-backward references: which teacher
blocks learn (``teacher_layers``, with the frozen trunk run once without grad and replayed), a
sub-batch meta-gradient (``meta_batch_size``) and the one-sided finite difference (``fd_scheme``);
plus the frozen weights staying bit-identical and the one-line errors for bad values."""

from __future__ import annotations

import pytest
import torch

from metakd import ConfigError, DistillConfig, MetaDistiller
from metakd.models import LORA_MARKER, ModelError, find_layer_list, tiny_causal_lm, tiny_classifier
from metakd.trunk import first_rows

from .conftest import make_batch
from .test_causal_lm import lm_batch, reference_lm_meta_gradient
from .test_metagrad_reference import _max_rel_err, _randomize_lora_b, reference_meta_gradient

BACKENDS = [("higher", 1e-6), ("jvp", 1e-6), ("finite_diff", 1e-4)]
LEVERS = {"top2": dict(teacher_layers="top:2"), "meta_batch": dict(meta_batch_size=4),
          "both": dict(teacher_layers=[1, 2], meta_batch_size=4)}


def _distiller(teacher, student, mode: str, backend: str, **settings) -> MetaDistiller:
    """Plain-SGD teacher with lr 1 and no clipping (it moves by exactly −∇_φ L_quiz), float64."""
    cfg = DistillConfig(meta_update=mode, meta_grad=backend, temperature=2.0, alpha=0.6, pilot_lr=0.5,
                        teacher_optimizer="sgd", teacher_lr=1.0, teacher_grad_clip=None, batch_size=6,
                        progress=False, **settings)
    d = MetaDistiller(teacher, student, cfg)
    if mode == "lora":
        _randomize_lora_b(d.teacher)
    return d


def _step_moves(d: MetaDistiller, batch, quiz) -> list[torch.Tensor]:
    before = [p.detach().clone() for p in d.phi]
    d.step(batch, quiz)
    return [p.detach() - b for p, b in zip(d.phi, before)]


def _blocks(d: MetaDistiller) -> tuple[str, int]:
    path, blocks = find_layer_list(d.teacher)
    return path, len(blocks)


def _in_blocks(name: str, path: str, layers) -> bool:
    return any(name.startswith(f"{path}.{i}.") for i in layers)


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("lever", list(LEVERS))
@pytest.mark.parametrize("backend,tol", BACKENDS, ids=[b for b, _ in BACKENDS])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_classifier_meta_gradient_matches_reference(arch, mode, backend, tol, lever):
    """BERT and GPT-2 classifiers (3-block teacher): the teacher moves by −(the reference
    meta-gradient of a pilot step on the first meta_batch_size rows) over the learning blocks only."""
    teacher = tiny_classifier(arch, num_layers=3, hidden_size=16, seed=1, dtype=torch.float64)
    student = tiny_classifier(arch, num_layers=2, hidden_size=16, seed=2, dtype=torch.float64)
    d = _distiller(teacher, student, mode, backend, **LEVERS[lever])
    path, _ = _blocks(d)
    names = [name for name, p in d.teacher.named_parameters() if p.requires_grad]
    assert names
    if "teacher_layers" in LEVERS[lever]:
        assert all(_in_blocks(name, path, [1, 2]) for name in names)
        assert d.trunk is not None and d.trunk.start == 1
    batch, quiz = make_batch(0), make_batch(1)
    want = reference_meta_gradient(d.teacher, d.student, first_rows(batch, d.config.meta_batch_size), quiz, names,
                                   T=2.0, alpha=0.6, lr=0.5, steps=1)
    assert max(float(w.abs().max()) for w in want) > 0
    assert _max_rel_err(_step_moves(d, batch, quiz), [-w for w in want]) <= tol


@pytest.mark.parametrize("backend,tol", BACKENDS, ids=[b for b, _ in BACKENDS])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_llama_meta_gradient_matches_reference(mode, backend, tol):
    """A Llama causal LM (3 blocks, top 2 learn) with a 2-row meta batch of 4: token-level reference."""
    teacher = tiny_causal_lm("llama", num_layers=3, seed=1, dtype=torch.float64)
    student = tiny_causal_lm("llama", num_layers=1, seed=2, dtype=torch.float64)
    d = _distiller(teacher, student, mode, backend, task="causal_lm", lm_chunk_size=7, teacher_layers="top:2",
                   meta_batch_size=2)
    assert d.trunk is not None
    names = [name for name, p in d.teacher.named_parameters() if p.requires_grad]
    batch, quiz = lm_batch(0), lm_batch(1)
    want = reference_lm_meta_gradient(d.teacher, d.student, first_rows(batch, 2), quiz, names, T=2.0, alpha=0.6,
                                      lr=0.5)
    assert max(float(w.abs().max()) for w in want) > 0
    assert _max_rel_err(_step_moves(d, batch, quiz), [-w for w in want]) <= tol


def test_meta_batch_real_student_step_uses_the_whole_batch():
    """meta_batch_size changes the meta-gradient only: with SGD everywhere, the student moves by
    −lr·∇_θ L_in(θ, z_T(φ_new)) on all rows, φ_new being the teacher after its meta-update."""
    teacher = tiny_classifier("bert", num_layers=3, seed=1, dtype=torch.float64)
    student = tiny_classifier("bert", num_layers=2, seed=2, dtype=torch.float64)
    d = _distiller(teacher, student, "lora", "jvp", meta_batch_size=2, teacher_layers="top:1",
                   student_optimizer="sgd", student_lr=0.3)
    batch, quiz = make_batch(0), make_batch(1)
    theta = [p.detach().clone() for p in d.student_params]
    d.step(batch, quiz)
    moved = [p.detach() - b for p, b in zip(d.student_params, theta)]
    with torch.no_grad():
        t_logits = d.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.enable_grad():
        for p, b in zip(d.student_params, theta):
            p.data.copy_(b)
        s_logits = d.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        p_t = torch.softmax(t_logits / 2.0, -1)
        kl = (p_t * (torch.log_softmax(t_logits / 2.0, -1) - torch.log_softmax(s_logits / 2.0, -1))).sum(-1).mean()
        loss = 0.6 * 4.0 * kl + 0.4 * torch.nn.functional.cross_entropy(s_logits, batch["labels"])
        grads = torch.autograd.grad(loss, d.student_params)
    assert _max_rel_err(moved, [-0.3 * g for g in grads]) <= 1e-10


# ---------------------------------------------------------------------------- the frozen trunk
def _count_calls(blocks) -> list[int]:
    """How often each block really computes (a hook on its first submodule: a replayed block's
    own hooks fire, its submodules' do not)."""
    counts = [0] * len(blocks)
    for i, block in enumerate(blocks):
        next(block.children()).register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_frozen_weights_stay_bit_identical_and_trunk_runs_once(arch, mode):
    """Over three restore meta-steps, only the learning blocks' φ move; every other teacher weight
    (embeddings, trunk, head; the base under the adapters) is bit-identical. Each trunk block runs
    once per meta-step (its output is replayed in the restore forward), each learning block twice;
    and replaying changes nothing: the same steps with the trunk recomputed give the same models."""
    def build(trunk: bool) -> MetaDistiller:
        teacher = tiny_classifier(arch, num_layers=3, hidden_size=16, seed=1, dtype=torch.float64)
        student = tiny_classifier(arch, num_layers=2, hidden_size=16, seed=2, dtype=torch.float64)
        d = _distiller(teacher, student, mode, "jvp", teacher_layers="top:1", feature_layers={1: 1},
                       feature_weight=0.5)
        if not trunk:
            d.meta_step.trunk = None  # the step runs the trunk blocks with the rest
        return d

    d, plain = build(True), build(False)
    path, n = _blocks(d)
    before = {name: p.detach().clone() for name, p in d.teacher.named_parameters()}
    counts = _count_calls(find_layer_list(d.teacher)[1])
    for i in range(3):
        for model in (d, plain):
            model.step(make_batch(2 * i), make_batch(2 * i + 1))
    assert counts == [3, 3, 6]
    after = dict(d.teacher.named_parameters())
    moved = [name for name in after if not torch.equal(after[name], before[name])]
    assert moved and all(_in_blocks(name, path, [2]) for name in moved), moved
    if mode == "lora":
        assert all(LORA_MARKER in name for name in moved)
        assert not any(LORA_MARKER in name and not _in_blocks(name, path, [2]) for name in after)
    for a, b in zip(d.teacher.parameters(), plain.teacher.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    for a, b in zip(d.student_params, plain.student_params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_teacher_checkpointing_with_top_layers_agrees():
    """teacher_checkpointing recomputes the learning blocks only (the trunk is replayed, never
    recomputed) and gives the meta-gradient of the independent float64 reference."""
    teacher = tiny_classifier("gpt2", num_layers=3, seed=1, dtype=torch.float64)
    student = tiny_classifier("gpt2", num_layers=2, seed=2, dtype=torch.float64)
    d = _distiller(teacher, student, "full", "jvp", teacher_layers="top:1")
    names = [name for name, p in d.teacher.named_parameters() if p.requires_grad]
    batch, quiz = make_batch(0), make_batch(1)
    want = reference_meta_gradient(d.teacher, d.student, batch, quiz, names, T=2.0, alpha=0.6, lr=0.5, steps=1)
    assert max(float(w.abs().max()) for w in want) > 0
    counts = _count_calls(find_layer_list(d.teacher)[1])
    d.meta_gradient(batch, quiz)
    plain = list(counts)
    d.config.teacher_checkpointing = True
    d.meta_step.teacher_blocks = find_layer_list(d.teacher)[0]
    got = d.meta_gradient(batch, quiz).phi_grads
    assert _max_rel_err(got, want) <= 1e-10
    checkpointed = [after - 2 * before for after, before in zip(counts, plain)]  # the second call's runs, less the first's
    assert checkpointed[:2] == [0, 0] and checkpointed[2] > 0, (plain, counts)  # the learning block recomputes


def test_quantized_teacher_top_layer_only():
    """A 4-bit teacher with top:1: only block 1's adapters move; the base stays bit-identical."""
    bnb = pytest.importorskip("bitsandbytes")
    from metakd.quantization import quantize

    teacher = quantize(tiny_classifier("bert", num_layers=2, hidden_size=64, seed=1), 4, "nf4", device="cpu")
    student = tiny_classifier("bert", num_layers=1, hidden_size=64, seed=2)
    d = MetaDistiller(teacher, student, DistillConfig(meta_update="lora", meta_grad="jvp", teacher_layers="top:1",
                                                      teacher_lr=1e-2, pilot_lr=0.5, progress=False))
    path, _ = _blocks(d)
    before = {name: p.detach().clone() for name, p in d.teacher.named_parameters()}
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in d.teacher.modules())
    for i in range(2):
        assert d.step(make_batch(2 * i), make_batch(2 * i + 1))["teacher_grad_norm"] > 0
    moved = [n for n, p in d.teacher.named_parameters() if not torch.equal(p, before[n])]
    assert moved and all(LORA_MARKER in n and _in_blocks(n, path, [1]) for n in moved), moved


# ---------------------------------------------------------------------------- one-sided difference
def test_forward_difference_reuses_the_pilot_outputs_and_is_first_order_accurate(arch):
    """fd_scheme='forward' runs one student forward fewer than 'central' and matches the exact
    (jvp) meta-gradient to O(fd_epsilon): measured 1.7e-5..4.0e-3 relative in float64 (both archs,
    student dropout 0.1, three batch pairs) against 1.2e-7..3.4e-5 for 'central'."""
    batch, quiz = make_batch(0), make_batch(1)
    results, calls = {}, {}
    for backend, scheme in (("jvp", "central"), ("finite_diff", "central"), ("finite_diff", "forward")):
        teacher = tiny_classifier(arch, num_layers=3, seed=1, dtype=torch.float64)
        student = tiny_classifier(arch, num_layers=2, seed=2, dtype=torch.float64, dropout=0.1)
        d = _distiller(teacher, student, "lora", backend, fd_scheme=scheme)
        n = [0]
        d.student_module.register_forward_hook(lambda *_: n.__setitem__(0, n[0] + 1))
        torch.manual_seed(0)
        results[scheme if backend != "jvp" else "jvp"] = d.meta_gradient(batch, quiz).phi_grads
        calls[scheme if backend != "jvp" else "jvp"] = n[0]
    assert calls["forward"] == calls["central"] - 1
    exact = results["jvp"]
    assert _max_rel_err(results["central"], exact) <= 1e-4
    forward_err = _max_rel_err(results["forward"], exact)
    assert 0 < forward_err <= 1e-2


# ---------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("value", ["top:4", [0, 3], [7]])
def test_teacher_layers_beyond_the_teacher_is_one_line_error_naming_its_blocks(value):
    with pytest.raises(ModelError, match="the teacher has 3 blocks") as info:
        MetaDistiller(tiny_classifier(num_layers=3, seed=1), tiny_classifier(seed=2),
                      DistillConfig(teacher_layers=value, progress=False))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["top:0", "top", "bottom:2", [], [-1], [1, 1], "2", 2, [True]])
def test_teacher_layers_naming_no_block_is_a_config_error(value):
    with pytest.raises(ConfigError, match="teacher_layers must be") as info:
        DistillConfig(teacher_layers=value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("settings,message", [
    (dict(meta_batch_size=0), "meta_batch_size must be a positive integer"),
    (dict(meta_batch_size=64, batch_size=32), "larger than batch_size"),
    (dict(meta_batch_size=8, pilot="reuse"), "needs pilot='restore'"),
    (dict(fd_scheme="backward"), "fd_scheme must be one of"),
])
def test_bad_meta_batch_size_and_fd_scheme(settings, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**settings)


def test_settings_from_run_file_overrides_and_yaml(tmp_path):
    from metakd.run import apply_overrides

    values = apply_overrides({}, ["distill.teacher_layers=top:2", "distill.meta_batch_size=8",
                                  "distill.fd_scheme=forward"])
    cfg = DistillConfig.from_dict(values["distill"])
    assert (cfg.teacher_layers, cfg.meta_batch_size, cfg.fd_scheme) == ("top:2", 8, "forward")
    cfg = DistillConfig.from_dict(apply_overrides({}, ["teacher_layers=[4, 5]"]))
    cfg.save_yaml(tmp_path / "c.yaml")
    assert DistillConfig.from_yaml(tmp_path / "c.yaml").teacher_layers == [4, 5]
