"""MetaDistiller behaviour: what each mode may change, the schedules, fit, and bad input."""

from __future__ import annotations

import pytest
import torch

from metakd import ConfigError, DistillConfig, MetaDistiller
from metakd.data import DataError
from metakd.models import LORA_MARKER, ModelError, tiny_classifier

from .conftest import make_batch


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _run(mode: str, arch: str, steps: int = 3, **overrides):
    teacher = tiny_classifier(arch, num_layers=3, seed=1)
    student = tiny_classifier(arch, num_layers=2, seed=2)
    cfg = DistillConfig(meta_update=mode, teacher_lr=1e-2, student_lr=1e-2, pilot_lr=0.5, progress=False,
                        **overrides)
    d = MetaDistiller(teacher, student, cfg)
    before = _snapshot(d.teacher)
    student_before = _snapshot(d.student)
    for i in range(steps):
        d.step(make_batch(2 * i), make_batch(2 * i + 1))
    return d, before, student_before


@pytest.mark.parametrize("arch_name", ["bert", "gpt2"])
def test_lora_mode_moves_only_adapters(arch_name):
    d, before, _ = _run("lora", arch_name)
    after = _snapshot(d.teacher)
    adapters = [n for n in after if LORA_MARKER in n]
    assert adapters
    for name, value in after.items():
        if LORA_MARKER in name:
            continue
        assert torch.equal(value, before[name]), f"base weight {name} changed in lora mode"
    assert any(not torch.equal(after[n], before[n]) for n in adapters), "no adapter moved"
    assert d.trainable_teacher_parameters() == sum(after[n].numel() for n in adapters)


def test_full_mode_moves_base_weights():
    d, before, _ = _run("full", "bert")
    after = _snapshot(d.teacher)
    assert not any(LORA_MARKER in n for n in after)
    moved = [n for n in after if not torch.equal(after[n], before[n])]
    assert any("encoder" in n for n in moved) and any("classifier" in n for n in moved)


def test_none_mode_leaves_teacher_untouched_and_trains_student():
    d, before, student_before = _run("none", "bert")
    after = _snapshot(d.teacher)
    assert all(torch.equal(after[n], before[n]) for n in after)
    assert any(not torch.equal(p, student_before[n]) for n, p in _snapshot(d.student).items())


@pytest.mark.parametrize("pilot", ["restore", "reuse"])
def test_pilot_schedules_update_student(pilot):
    d, _, student_before = _run("lora", "bert", pilot=pilot)
    assert any(not torch.equal(p, student_before[n]) for n, p in _snapshot(d.student).items())


BACKENDS = ["higher", "jvp", "finite_diff"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_reuse_student_step_is_the_pilot_gradient(backend):
    """With SGD students, 'reuse' moves θ by −student_lr·∇_θ L_in(θ, z_T(φ_old)), whatever the backend."""
    torch.manual_seed(0)
    teacher = tiny_classifier("bert", num_layers=3, seed=1, dtype=torch.float64)
    student = tiny_classifier("bert", num_layers=2, seed=2, dtype=torch.float64)
    cfg = DistillConfig(meta_update="lora", meta_grad=backend, pilot="reuse", student_optimizer="sgd",
                        student_lr=0.1, progress=False)
    d = MetaDistiller(teacher, student, cfg)
    batch, quiz = make_batch(0), make_batch(1)
    with torch.no_grad():
        t_logits = d.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = d.objective.inner(d.student_module(batch), type("O", (), {"logits": t_logits, "hidden": {}})(), batch)
    grads = torch.autograd.grad(loss, d.student_params)
    before = [p.detach().clone() for p in d.student_params]
    d.step(batch, quiz)
    for p, b, g in zip(d.student_params, before, grads):
        torch.testing.assert_close(p.detach(), b - 0.1 * g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_every_runs_plain_steps_between(backend):
    teacher, student = tiny_classifier("bert", num_layers=3, seed=1), tiny_classifier("bert", seed=2)
    d = MetaDistiller(teacher, student, DistillConfig(meta_update="lora", meta_grad=backend, meta_every=2,
                                                      teacher_lr=1e-2, progress=False))
    metas, adapters = [], []
    for i in range(4):
        before = [p.detach().clone() for p in d.phi]
        metrics = d.step(make_batch(2 * i), make_batch(2 * i + 1))
        metas.append(metrics["meta"])
        adapters.append(any(not torch.equal(p, b) for p, b in zip(d.phi, before)))
    assert metas == [1.0, 0.0, 1.0, 0.0]
    assert adapters == [True, False, True, False]  # the teacher learns only on meta-steps


def test_meta_mode_needs_quiz_batch():
    d = MetaDistiller(tiny_classifier(seed=1), tiny_classifier(seed=2), DistillConfig(progress=False))
    with pytest.raises(ValueError, match="quiz_batch"):
        d.step(make_batch(0))


def _examples(n: int, seed: int = 0, labels: int = 2):
    """A learnable task: the label is whether token 5 occurs in the sequence."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        ids = torch.randint(6, 64, (8,), generator=g)
        y = i % labels
        if y == 1:
            ids[int(torch.randint(0, 8, (1,), generator=g))] = 5
        items.append({"input_ids": ids, "attention_mask": torch.ones(8, dtype=torch.long), "labels": torch.tensor(y)})
    return items


@pytest.mark.slow
def test_fit_improves_held_out_accuracy():
    teacher = tiny_classifier("bert", num_layers=2, hidden_size=32, seed=1)
    # Teach the teacher the task first.
    from metakd.finetune import finetune_classifier

    train, held_out = _examples(480, seed=0), _examples(200, seed=1)
    finetune_classifier(teacher, train, epochs=6, lr=3e-3, batch_size=32, progress=False)
    student = tiny_classifier("bert", num_layers=1, hidden_size=32, seed=3)
    cfg = DistillConfig(meta_update="lora", student_lr=3e-3, teacher_lr=1e-3, pilot_lr=1e-2, batch_size=32,
                        epochs=6, progress=False)
    d = MetaDistiller(teacher, student, cfg)
    start = d.evaluate(held_out)["accuracy"]
    history = d.fit(train, eval_data=held_out)
    end = history["eval"][-1]["accuracy"]
    assert end >= start + 0.2 and end > 0.8, (start, end)
    assert all("quiz_loss" in h for h in history["train"])


@pytest.mark.parametrize("field,value", [("meta_update", "partial"), ("pilot_lr", -1.0), ("temperature", 0.0),
                                         ("student_lr", -0.1)])
def test_bad_config_is_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        DistillConfig(**{field: value})


def test_empty_data_is_refused_before_training():
    d = MetaDistiller(tiny_classifier(seed=1), tiny_classifier(seed=2), DistillConfig(progress=False))
    with pytest.raises(DataError, match="empty"):
        d.fit([])


def test_labels_out_of_range_are_refused_before_training():
    d = MetaDistiller(tiny_classifier(seed=1), tiny_classifier(seed=2), DistillConfig(progress=False))
    before = _snapshot(d.student)
    with pytest.raises(DataError, match="outside 0..1"):
        d.fit(_examples(20, labels=3))
    assert all(torch.equal(p, before[n]) for n, p in _snapshot(d.student).items())


def test_mismatched_label_counts_are_refused():
    with pytest.raises(ModelError, match="labels"):
        MetaDistiller(tiny_classifier(num_labels=3, seed=1), tiny_classifier(num_labels=2, seed=2))


@pytest.mark.parametrize("layers, want", [({-1: -1}, {2: 3}), ({1: -2}, {1: 2}), ({-3: -4}, {0: 0})])
def test_negative_feature_layers_count_from_the_end(layers, want):
    from metakd.distiller import resolve_feature_layers

    assert resolve_feature_layers(layers, n_student=2, n_teacher=3) == want


@pytest.mark.parametrize("layers", [{3: 1}, {-4: 1}, {1: 4}, {1: -5}])
def test_feature_layers_out_of_range_name_the_ranges(layers):
    from metakd.distiller import resolve_feature_layers

    with pytest.raises(ModelError, match=r"0\.\.2 .*0\.\.3"):
        resolve_feature_layers(layers, n_student=2, n_teacher=3)


def test_distiller_trains_features_mapped_with_negative_indices():
    teacher = tiny_classifier("bert", num_layers=3, seed=1)
    student = tiny_classifier("bert", num_layers=2, seed=2)
    d = MetaDistiller(teacher, student, DistillConfig(meta_update="none", feature_layers={-1: -1},
                                                      feature_weight=1.0, progress=False))
    assert d.objective.feature_layers == {2: 3}
    assert d.step(make_batch(0))["student_loss"] > 0


def test_evaluate_reports_tokens_per_second_of_real_tokens():
    d, _, _ = _run("none", "bert", steps=0)
    data = [{"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.ones(3, dtype=torch.long),
             "labels": torch.tensor(1)},
            {"input_ids": torch.tensor([5, 6, 7, 8, 9]), "attention_mask": torch.ones(5, dtype=torch.long),
             "labels": torch.tensor(0)}]  # padded to 2 x 5: 8 real tokens, 2 examples
    scores = d.evaluate(data)
    assert scores["tokens_per_second"] > 0 and scores["examples_per_second"] > 0
    assert scores["tokens_per_second"] / scores["examples_per_second"] == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize("overrides", [dict(meta_update="lora"), dict(meta_update="none", student_lora=True)])
def test_adapters_start_from_the_config_seed(overrides):
    def adapters(seed):
        torch.manual_seed(1000 + seed * 7)  # whatever the global RNG holds before
        d = MetaDistiller(tiny_classifier("bert", num_layers=2, seed=1), tiny_classifier("bert", num_layers=1, seed=2),
                          DistillConfig(seed=3, progress=False, **overrides))
        model = d.student if overrides.get("student_lora") else d.teacher
        return {n: p.detach().clone() for n, p in model.named_parameters() if LORA_MARKER in n}

    a, b = adapters(0), adapters(1)
    assert a and all(torch.equal(a[n], b[n]) for n in a)
