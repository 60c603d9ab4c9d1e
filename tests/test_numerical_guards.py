"""Numerical guards: a step with a NaN/inf loss or gradient is skipped (nothing applied), counted and
logged; max_bad_steps bad steps in a row stop the run with NumericalError naming the likely causes."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from metakd import ConfigError, DistillConfig, MetaDistiller, NumericalError
from metakd import cli
from metakd import meta_step as meta_step_mod
from metakd.models import tiny_classifier

from .conftest import make_batch

NAN = float("nan")


def _distiller(mode: str = "none", arch: str = "bert", teacher=None, student=None, **overrides) -> MetaDistiller:
    teacher = teacher if teacher is not None else tiny_classifier(arch, num_layers=2, seed=1)
    student = student if student is not None else tiny_classifier(arch, num_layers=1, seed=2)
    cfg = dict(meta_update=mode, teacher_lr=1e-2, student_lr=1e-2, pilot_lr=0.5, progress=False)
    return MetaDistiller(teacher, student, DistillConfig(**{**cfg, **overrides}))


def _state(d: MetaDistiller) -> dict:
    """Every parameter of both sides and both optimizers' state, copied."""
    return {"teacher": {n: p.detach().clone() for n, p in d.teacher.named_parameters()},
            "student": {n: p.detach().clone() for n, p in d.student_module.named_parameters()},
            "student_opt": copy.deepcopy(d.student_optimizer.state_dict()),
            "teacher_opt": copy.deepcopy(d.teacher_optimizer.state_dict()) if d.teacher_optimizer else None}


def _assert_same(a, b, where: str = "") -> None:
    """Bit-for-bit equal (NaN where NaN), recursively through dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _poison_teacher(d: MetaDistiller) -> None:
    """NaN in the teacher's output head: every teacher logit is NaN."""
    head = [p for n, p in d.teacher.named_parameters() if n.split(".")[-2] in ("classifier", "score")]
    assert head
    with torch.no_grad():
        head[0].fill_(NAN)


def _nan_inner_on(d: MetaDistiller, bad_steps: set[int]) -> None:
    """The inner (distillation) loss is NaN on the steps (d.steps_done) in ``bad_steps``."""
    inner = d.objective.inner
    d.objective.inner = lambda s, t, b: inner(s, t, b) * (NAN if d.steps_done in bad_steps else 1.0)


# ---------------------------------------------------------------------------- plain KD steps
def test_nan_teacher_output_skips_the_kd_step(tiny_pair, caplog):
    teacher, student = tiny_pair
    d = _distiller("none", teacher=teacher, student=student)
    assert d.step(make_batch(0))["skipped"] == 0.0  # a good step first: AdamW has state to keep
    _poison_teacher(d)
    before = _state(d)
    assert before["student_opt"]["state"], "the good step left no optimizer state"
    with caplog.at_level(logging.WARNING, logger="metakd.distiller"):
        metrics = d.step(make_batch(1))
    _assert_same(_state(d), before)  # student, teacher, AdamW step counts and moments untouched
    assert metrics["skipped"] == 1.0 and math.isnan(metrics["student_loss"])
    assert all(p.grad is None for p in d.student_params)  # no NaN gradient left behind
    assert (d.skipped_steps, d.bad_in_a_row, d.steps_done) == (1, 1, 2)
    assert "step 1 skipped: student loss" in caplog.text


def test_nan_student_gradient_with_a_finite_loss_is_skipped(caplog):
    d = _distiller("none")
    d.step(make_batch(0))
    d.student_params[0].register_hook(lambda g: g * NAN)
    before = _state(d)
    with caplog.at_level(logging.WARNING, logger="metakd.distiller"):
        metrics = d.step(make_batch(1))
    assert math.isfinite(metrics["student_loss"]) and metrics["skipped"] == 1.0
    _assert_same(_state(d), before)
    assert "student gradient NaN/inf" in caplog.text and "student loss" not in caplog.text


def test_inf_student_loss_is_skipped():
    d = _distiller("none")
    inner = d.objective.inner
    d.objective.inner = lambda s, t, b: inner(s, t, b) + float("inf")
    before = _state(d)
    metrics = d.step(make_batch(0))
    assert metrics["student_loss"] == float("inf") and metrics["skipped"] == 1.0
    _assert_same(_state(d), before)


# ---------------------------------------------------------------------------- meta steps
META = [("lora", "jvp", "restore"), ("lora", "higher", "restore"), ("lora", "finite_diff", "reuse"),
        ("full", "higher", "reuse"), ("full", "jvp", "restore")]


@pytest.mark.parametrize("mode,backend,pilot", META)
def test_nan_quiz_loss_applies_nothing(mode, backend, pilot, caplog):
    d = _distiller(mode, meta_grad=backend, pilot=pilot)
    d.step(make_batch(0), make_batch(1))
    quiz = d.objective.quiz
    d.objective.quiz = lambda s, b: quiz(s, b) * NAN
    before = _state(d)
    with caplog.at_level(logging.WARNING, logger="metakd.distiller"):
        metrics = d.step(make_batch(2), make_batch(3))
    _assert_same(_state(d), before)
    assert metrics["meta"] == 1.0 and metrics["skipped"] == 1.0
    assert math.isnan(metrics["quiz_loss"]) and math.isnan(metrics["teacher_grad_norm"])
    assert math.isfinite(metrics["inner_loss"])
    assert "step 1 skipped: quiz loss" in caplog.text
    assert "NaN/inf, neither the teacher nor the student updated" in caplog.text
    assert (d.skipped_steps, d.bad_in_a_row) == (1, 1)


@pytest.mark.parametrize("mode,backend,pilot", META)
def test_nan_meta_gradient_alone_applies_nothing(mode, backend, pilot, monkeypatch, caplog):
    d = _distiller(mode, meta_grad=backend, pilot=pilot)
    d.step(make_batch(0), make_batch(1))
    real = meta_step_mod.meta_gradient

    def poisoned(*args, **kwargs):
        result = real(*args, **kwargs)
        result.phi_grads[-1] = torch.full_like(result.phi_grads[-1], NAN)
        return result

    monkeypatch.setattr(meta_step_mod, "meta_gradient", poisoned)
    before = _state(d)
    with caplog.at_level(logging.WARNING, logger="metakd.distiller"):
        metrics = d.step(make_batch(2), make_batch(3))
    _assert_same(_state(d), before)
    assert metrics["skipped"] == 1.0 and math.isfinite(metrics["quiz_loss"])
    assert "step 1 skipped: meta-gradient NaN/inf" in caplog.text


def test_finite_diff_reports_a_nan_quiz_gradient_as_a_nan_meta_gradient(monkeypatch):
    from metakd.metagrad import finite_diff_backend

    d = _distiller("lora", meta_grad="finite_diff", pilot="reuse")
    real = finite_diff_backend.quiz_gradient

    def nan_gradient(*args, **kwargs):
        loss, g = real(*args, **kwargs)
        return loss, [torch.full_like(x, NAN) for x in g]  # the loss stays finite

    monkeypatch.setattr(finite_diff_backend, "quiz_gradient", nan_gradient)
    result = d.meta_gradient(make_batch(0), make_batch(1))
    assert math.isfinite(result.quiz_loss)
    assert all(bool(torch.isnan(x).all()) for x in result.phi_grads)  # never a silent zero
    before = _state(d)
    assert d.step(make_batch(2), make_batch(3))["skipped"] == 1.0
    _assert_same(_state(d), before)


@pytest.mark.parametrize("backend", ["jvp", "higher"])
def test_nan_inner_loss_in_a_meta_step_applies_nothing(backend, caplog):
    d = _distiller("lora", meta_grad=backend, pilot="reuse")
    _nan_inner_on(d, {0})
    before = _state(d)
    with caplog.at_level(logging.WARNING, logger="metakd.distiller"):
        metrics = d.step(make_batch(0), make_batch(1))
    _assert_same(_state(d), before)
    assert metrics["skipped"] == 1.0 and math.isnan(metrics["student_loss"])
    assert "step 0 skipped: inner loss, pilot gradient" in caplog.text


def test_restore_student_step_has_its_own_check(caplog):
    """pilot='restore': a finite meta-step updates the teacher; a NaN in the restored student step
    then skips only the student's update."""
    d = _distiller("lora", meta_grad="jvp", pilot="restore")
    d.step(make_batch(0), make_batch(1))
    real_step = d.teacher_optimizer.step

    def step_then_break_teacher(*args, **kwargs):
        out = real_step(*args, **kwargs)
        with torch.no_grad():
            d.phi[-1].fill_(NAN)  # the teacher update "diverged": the restore forward reads NaN logits
        return out

    d.teacher_optimizer.step = step_then_break_teacher
    before = _state(d)
    with caplog.at_level(logging.WARNING, logger="metakd.distiller"):
        metrics = d.step(make_batch(2), make_batch(3))
    _assert_same({k: before[k] for k in ("student", "student_opt")},
                 {k: _state(d)[k] for k in ("student", "student_opt")})
    assert _state(d)["teacher_opt"]["state"][0]["step"] == before["teacher_opt"]["state"][0]["step"] + 1
    assert metrics["skipped"] == 1.0 and math.isfinite(metrics["quiz_loss"]) and math.isnan(metrics["student_loss"])
    assert "the student not updated (the teacher's meta-update was applied)" in caplog.text


# ---------------------------------------------------------------------------- counting and stopping
def test_a_good_step_resets_the_bad_run():
    d = _distiller("none", max_bad_steps=3)
    _nan_inner_on(d, {0, 1, 3, 4})
    seen = []
    for i in range(6):
        metrics = d.step(make_batch(i))
        seen.append((metrics["skipped"], d.bad_in_a_row, d.skipped_steps))
    assert seen == [(1.0, 1, 1), (1.0, 2, 2), (0.0, 0, 2), (1.0, 1, 3), (1.0, 2, 4), (0.0, 0, 4)]


def _examples(n: int):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1, 64, (8,), generator=g), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]


@pytest.mark.parametrize("mode", ["none", "lora"])
def test_intermittent_nans_below_the_limit_let_fit_finish(mode):
    d = _distiller(mode, meta_grad="jvp", max_bad_steps=3, batch_size=4)
    _nan_inner_on(d, {1, 3, 4, 7})
    history = d.fit(_examples(44))  # 40 training examples after the quiz split: 10 steps
    skipped = [h["skipped"] for h in history["train"]]
    assert skipped == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert d.skipped_steps == 4 and d.bad_in_a_row == 0 and d.steps_done == 10


@pytest.mark.parametrize("mode", ["none", "lora"])
def test_too_many_bad_steps_in_a_row_stop_fit_naming_the_causes(mode):
    d = _distiller(mode, meta_grad="jvp", max_bad_steps=4, batch_size=4, temperature=3.0)
    _nan_inner_on(d, {0, 2, 3, 4, 5, 6, 7})
    with pytest.raises(NumericalError) as caught:
        d.fit(_examples(44))
    message = str(caught.value)
    assert d.skipped_steps == 5 and d.bad_in_a_row == 4 and d.steps_done == 6
    assert "NaN/inf in 4 steps in a row (steps 2-5)" in message
    assert "student_lr 0.01 too high" in message and "temperature 3.0 too low" in message
    assert "\n" not in message
    if mode == "none":
        assert message.startswith("student loss and student gradient were NaN/inf")
        assert "pilot_lr" not in message
    else:
        assert message.startswith("inner loss, pilot gradient, quiz loss and meta-gradient were NaN/inf")
        assert "the pilot step's lr 0.5 (pilot_lr) too large" in message
        assert "the teacher's lr 0.01 (teacher_lr) too high" in message


def test_the_stop_message_names_the_learning_rates_the_run_used():
    """A teacher lr set as a ratio of the student's and a pilot following the student's lr are named
    as such, with the values the run used (not the unused teacher_lr / pilot_lr fields)."""
    d = _distiller("lora", meta_grad="jvp", max_bad_steps=2, batch_size=4, teacher_lr_ratio=0.5, pilot_lr="student")
    _nan_inner_on(d, {0, 1, 2, 3})
    with pytest.raises(NumericalError) as caught:
        d.fit(_examples(44))
    message = str(caught.value)
    assert "the teacher's lr 0.005 (teacher_lr_ratio 0.5 x student_lr) too high" in message
    assert "the pilot step's lr 0.01 (pilot_lr: student, the student's current lr) too large" in message


def test_a_huge_learning_rate_really_diverges_and_stops_the_run(caplog):
    """No injected NaN: SGD at student_lr 1e6 blows the GPT-2 student up within a few steps."""
    d = _distiller("none", arch="gpt2", student_optimizer="sgd", student_lr=1e6, max_bad_steps=3)
    losses = []
    with caplog.at_level(logging.WARNING, logger="metakd.distiller"), pytest.raises(NumericalError) as caught:
        for i in range(12):
            losses.append(d.step(make_batch(i))["student_loss"])
    assert math.isfinite(losses[0])  # it started well
    assert "student loss" in str(caught.value) and "student_lr 1000000.0 too high (sgd)" in str(caught.value)
    assert d.bad_in_a_row == 3 and "skipped" in caplog.text


# ---------------------------------------------------------------------------- config and CLI
@pytest.mark.parametrize("value", [0, -1, 2.5, True, None])
def test_max_bad_steps_must_be_a_positive_integer(value):
    with pytest.raises(ConfigError, match="max_bad_steps"):
        DistillConfig(max_bad_steps=value)


def test_cli_prints_numerical_error_as_one_line(capsys):
    def fail():
        raise NumericalError("student loss was NaN/inf in 10 steps in a row; lower student_lr")

    assert cli._guard(fail) == 2
    err = capsys.readouterr().err
    assert err == "metakd: error: student loss was NaN/inf in 10 steps in a row; lower student_lr\n"
