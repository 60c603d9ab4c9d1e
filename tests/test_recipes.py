"""Recipes as presets (they fill only what a config did not set) and the knobs they set: the "mse"
divergence, the "margin" quiz loss, meta_start, quiz_batches, pilot_lr="student", teacher_lr_ratio."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.func import functional_call

import metakd.meta_step
from metakd import DistillConfig, MetaDistiller
from metakd.config import ConfigError
from metakd.forward import Outputs
from metakd.losses import kd_divergence, token_kd_loss
from metakd.models import tiny_classifier
from metakd.objective import Objective
from metakd.recipes import RECIPES, describe

from .conftest import make_batch

LGTM_BUT_CE = {"meta_weight": 1.0, "teacher_student_weight": 0.4, "teacher_lr_ratio": 1.0, "pilot_lr": "student"}


# ---------------------------------------------------------------------------- presets
def test_a_recipe_fills_only_the_fields_not_set():
    cfg = DistillConfig(recipe="lgtm", teacher_ce_weight=0.3)
    assert cfg.teacher_ce_weight == 0.3
    assert cfg.recipe_filled == LGTM_BUT_CE
    assert all(getattr(cfg, k) == v for k, v in LGTM_BUT_CE.items())


def test_a_field_set_to_its_default_value_is_still_set():
    """'Set' means passed, not 'different from the default': temperature=2.0 (the default) stays."""
    cfg = DistillConfig(recipe="metadistil", temperature=2.0, divergence="forward_kl")
    assert (cfg.temperature, cfg.divergence) == (2.0, "forward_kl")
    assert "temperature" not in cfg.recipe_filled and "divergence" not in cfg.recipe_filled
    assert cfg.quiz_batches == "all" and cfg.pilot_lr == "student"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_alone_sets_exactly_its_settings(name):
    cfg = DistillConfig(recipe=name)
    assert cfg.recipe_filled == RECIPES[name]
    assert {k: getattr(cfg, k) for k in RECIPES[name]} == RECIPES[name]
    untouched = DistillConfig()
    others = [f for f in cfg.to_dict() if f not in RECIPES[name] and f != "recipe"]
    assert {f: getattr(cfg, f) for f in others} == {f: getattr(untouched, f) for f in others}
    assert describe(name, cfg.recipe_filled).startswith(f"recipe {name} set ")


def test_no_recipe_fills_nothing():
    assert DistillConfig().recipe_filled == {}
    assert DistillConfig(teacher_ce_weight=0.5).recipe_filled == {}


def test_an_explicit_teacher_lr_is_not_overridden_by_the_recipes_ratio():
    """The recipe's teacher_lr_ratio would make the teacher_lr the config set ignored."""
    cfg = DistillConfig(recipe="lgtm", teacher_lr=3e-4, student_lr=1e-3)
    assert cfg.teacher_lr_ratio is None and "teacher_lr_ratio" not in cfg.recipe_filled
    d = MetaDistiller(tiny_classifier("bert", num_layers=2, seed=1), tiny_classifier("bert", num_layers=1, seed=2),
                      cfg.replace(progress=False))
    assert d.teacher_optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    # both set: the ratio, as documented
    both = DistillConfig(recipe="lgtm", teacher_lr=3e-4, teacher_lr_ratio=0.5)
    assert both.teacher_lr_ratio == 0.5


def test_from_dict_and_yaml_fill_the_same(tmp_path):
    want = DistillConfig(recipe="lgtm", teacher_ce_weight=0.3)
    got = DistillConfig.from_dict({"recipe": "lgtm", "teacher_ce_weight": 0.3})
    assert got == want and got.recipe_filled == want.recipe_filled == LGTM_BUT_CE
    for text in ("recipe: lgtm\nteacher_ce_weight: 0.3\n", "distill:\n  recipe: lgtm\n  teacher_ce_weight: 0.3\n"):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        loaded = DistillConfig.from_yaml(path)
        assert loaded == want and loaded.recipe_filled == LGTM_BUT_CE


def test_unknown_recipe_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="recipe.*'nope'.*metadistil"):
        DistillConfig(recipe="nope")
    with pytest.raises(ConfigError, match="nope"):
        DistillConfig.from_dict({"recipe": "nope"})
    path = tmp_path / "c.yaml"
    path.write_text("recipe: nope\n")
    with pytest.raises(ConfigError, match="nope"):
        DistillConfig.from_yaml(path)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_saved_and_reloaded_config_equals_the_original(tmp_path, name):
    original = DistillConfig(recipe=name, teacher_ce_weight=0.3, temperature=3.0, meta_start=0.5)
    path = tmp_path / "c.yaml"
    original.save_yaml(path)
    reloaded = DistillConfig.from_yaml(path)
    assert reloaded == original
    assert reloaded.to_dict() == original.to_dict()
    assert DistillConfig.from_dict(yaml.safe_load(path.read_text())) == original


# ---------------------------------------------------------------------------- the knobs, as pure functions
def test_mse_divergence_is_torch_mse_of_softened_probabilities_times_t2():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    T = 3.0
    want = torch.nn.MSELoss()(F.softmax(s / T, -1), F.softmax(t / T, -1)) * T * T
    torch.testing.assert_close(kd_divergence(s, t, T, "mse"), want, rtol=1e-12, atol=0)
    obj = Objective(T, 1.0, None, 0.0, divergence="mse")
    batch = {"labels": torch.zeros(5, dtype=torch.long)}
    torch.testing.assert_close(obj.inner(Outputs(s, {}), Outputs(t, {}), batch), want, rtol=1e-12, atol=0)
    # token level: the mean over the real positions
    s3, t3 = s.reshape(1, 5, 7), t.reshape(1, 5, 7)
    mask = torch.tensor([[1, 1, 0, 1, 0]])
    m = mask[0].bool()
    want_lm = torch.nn.MSELoss()(F.softmax(s[m] / T, -1), F.softmax(t[m] / T, -1)) * T * T
    got_lm = token_kd_loss(s3, t3, torch.zeros(1, 5, dtype=torch.long), T, 1.0, "mse", mask=mask, chunk_size=2)
    torch.testing.assert_close(got_lm, want_lm, rtol=1e-12, atol=0)


def test_margin_quiz_loss_is_multi_margin_loss():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    obj = Objective(2.0, 0.5, None, 0.0, quiz_loss="margin")
    torch.testing.assert_close(obj.quiz(Outputs(logits, {}), {"labels": labels}), F.multi_margin_loss(logits, labels),
                               rtol=1e-12, atol=0)
    assert not torch.allclose(F.multi_margin_loss(logits, labels), F.cross_entropy(logits, labels))


def test_margin_quiz_loss_drives_the_meta_step():
    """The meta-step's quiz loss and meta-gradient with quiz_loss="margin" are those of
    F.multi_margin_loss at θ' = θ − η∇_θ L_in (float64, from the definition)."""
    T, alpha, lr = 2.0, 0.6, 0.5
    cfg = DistillConfig(meta_update="full", meta_grad="jvp", quiz_loss="margin", temperature=T, alpha=alpha,
                        pilot_lr=lr, progress=False)
    teacher = tiny_classifier("bert", num_layers=2, hidden_size=16, seed=1, num_labels=3, dtype=torch.float64)
    student = tiny_classifier("bert", num_layers=1, hidden_size=16, seed=2, num_labels=3, dtype=torch.float64)
    d = MetaDistiller(teacher, student, cfg)
    batch, quiz = make_batch(0, labels=3), make_batch(1, labels=3)
    inputs = lambda b: {k: b[k] for k in ("input_ids", "attention_mask")}  # noqa: E731
    t = d.teacher(**inputs(batch)).logits
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in d.student.named_parameters()}
    s = functional_call(d.student, theta, args=(), kwargs=inputs(batch)).logits
    p_t = F.softmax(t / T, -1)
    kl = (p_t * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean()
    inner = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, batch["labels"])
    grads = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
    q = functional_call(d.student, {n: p - lr * g for (n, p), g in zip(theta.items(), grads)}, args=(),
                        kwargs=inputs(quiz)).logits
    quiz_loss = F.multi_margin_loss(q, quiz["labels"])
    want = torch.autograd.grad(quiz_loss, d.phi, allow_unused=True)
    want = [torch.zeros_like(p) if w is None else w for w, p in zip(want, d.phi)]
    result = d.meta_gradient(batch, quiz)
    assert result.quiz_loss == pytest.approx(float(quiz_loss), rel=1e-10)
    err = max(float((a - b).abs().max()) for a, b in zip(result.phi_grads, want))
    assert err <= 1e-6 * max(float(w.abs().max()) for w in want)


# ---------------------------------------------------------------------------- the knobs, in a run
EXAMPLES = [{k: v[i] for k, v in make_batch(s, batch=4, length=9).items()} for s in range(12) for i in range(4)]
# 48 examples: 12 quiz (quiz_fraction 0.25), 36 to train on: 9 steps of 4


def _distiller(**changes) -> MetaDistiller:
    settings = dict(meta_update="lora", meta_grad="jvp", batch_size=4, quiz_fraction=0.25, student_lr=1e-2,
                    progress=False, seed=3)
    if "recipe" not in changes:  # a recipe sets the teacher's and the pilot's lr itself
        settings.update(teacher_lr=1e-2, pilot_lr=1e-1)
    settings.update(changes)
    return MetaDistiller(tiny_classifier("bert", num_layers=2, hidden_size=16, seed=1),
                         tiny_classifier("bert", num_layers=1, hidden_size=16, seed=2), DistillConfig(**settings))


@pytest.mark.parametrize("meta_start", [3, 0.5])
def test_meta_start_delays_the_first_meta_step(meta_start):
    d = _distiller(meta_start=meta_start, max_steps=6)  # 0.5 of 6 steps: 3
    start = [p.detach().clone() for p in d.phi]
    calls = []
    step = d.step
    d.step = lambda b, q: (calls.append([p.detach().clone() for p in d.phi]), step(b, q))[1]
    history = d.fit(EXAMPLES)
    assert [m["meta"] for m in history["train"]] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert all("quiz_loss" not in m for m in history["train"][:3]) and all("quiz_loss" in m for m in history["train"][3:])
    assert all(torch.equal(a, b) for a, b in zip(calls[3], start))  # the teacher did not move before step 3
    assert not all(torch.equal(p.detach(), b) for p, b in zip(d.phi, start))


def test_a_share_for_meta_start_needs_fit():
    d = _distiller(meta_start=0.5)
    with pytest.raises(ValueError, match="meta_start"):
        d.step(make_batch(0, batch=4), make_batch(1, batch=4))


@pytest.mark.parametrize("quiz_batches,quiz_batch_size,rows", [(1, 2, 2), (3, 2, 6), (3, None, 12), ("all", 2, 12)])
def test_quiz_batches_multiply_the_quiz_rows(quiz_batches, quiz_batch_size, rows):
    d = _distiller(quiz_batches=quiz_batches, quiz_batch_size=quiz_batch_size, max_steps=3)
    seen = []
    step = d.step
    d.step = lambda b, q: (seen.append(int(q["labels"].shape[0])), step(b, q))[1]
    d.fit(EXAMPLES)
    assert seen == [rows] * 3


@pytest.mark.parametrize("quiz_batches", [2, "all"])
def test_quiz_batches_refuse_a_quiz_dataloader_before_any_step(quiz_batches):
    """A DataLoader's batches are its own: quiz_batches cannot average over several of them, and says so."""
    from torch.utils.data import DataLoader

    from metakd.data import make_collator

    d = _distiller(quiz_batches=quiz_batches, max_steps=3)
    quiz = DataLoader(EXAMPLES[:8], batch_size=4, collate_fn=make_collator({"teacher": 0, "student": 0}))
    train = DataLoader(EXAMPLES[8:], batch_size=4, collate_fn=make_collator({"teacher": 0, "student": 0}))
    with pytest.raises(ValueError, match=r"quiz_batches=.* a DataLoader's batches are its own"):
        d.fit(train, quiz_data=quiz)
    assert d.steps_done == 0
    _distiller(max_steps=2).fit(train, quiz_data=quiz)  # quiz_batches 1 takes the DataLoader as it is


def _record_pilot_lrs(monkeypatch) -> list[float]:
    seen = []
    backend = metakd.meta_step.meta_gradient

    def spy(name, problem):
        seen.append(problem.pilot_lr)
        return backend(name, problem)

    monkeypatch.setattr(metakd.meta_step, "meta_gradient", spy)
    return seen


def test_pilot_lr_student_follows_the_students_scheduled_lr(monkeypatch):
    seen = _record_pilot_lrs(monkeypatch)
    d = _distiller(pilot_lr="student", student_lr_schedule="linear", max_steps=5)
    history = d.fit(EXAMPLES)
    student_lrs = [m["student_lr"] for m in history["train"]]
    assert seen == student_lrs
    assert len(set(seen)) == 5 and seen[0] == pytest.approx(1e-2)  # it decays with the schedule


def test_a_numeric_pilot_lr_stays_put(monkeypatch):
    seen = _record_pilot_lrs(monkeypatch)
    _distiller(pilot_lr=0.25, student_lr_schedule="linear", max_steps=3).fit(EXAMPLES)
    assert seen == [0.25] * 3


def test_teacher_lr_ratio_sets_the_teacher_lr():
    d = _distiller(student_lr=2e-3, teacher_lr=5.0, teacher_lr_ratio=0.25, max_steps=2)
    assert d.teacher_optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    history = d.fit(EXAMPLES)
    assert history["train"][0]["teacher_lr"] == pytest.approx(5e-4)
    assert d.teacher_scheduler.base_lrs == [pytest.approx(5e-4)]
    assert _distiller(student_lr=2e-3, teacher_lr=5e-3).teacher_optimizer.param_groups[0]["lr"] == 5e-3


def test_the_metadistil_recipe_reaches_the_distiller(monkeypatch):
    seen = _record_pilot_lrs(monkeypatch)
    d = _distiller(recipe="metadistil", student_lr=1e-3, max_steps=2)
    assert isinstance(d.teacher_optimizer, torch.optim.AdamW)
    assert d.teacher_optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)
    assert d.objective.divergence == "mse" and d.objective.temperature == 5.0
    quiz_rows = []
    step = d.step
    d.step = lambda b, q: (quiz_rows.append(int(q["labels"].shape[0])), step(b, q))[1]
    history = d.fit(EXAMPLES)
    assert quiz_rows == [12, 12]  # the whole quiz split
    assert seen == [m["student_lr"] for m in history["train"]]


def test_a_resumed_second_fit_keeps_its_meta_start(tmp_path):
    """meta_start as a share resolves against the fit it belongs to: a fresh process resuming the
    second fit of a run (which started at step 3) must not count from step 0."""
    import os
    import signal

    from metakd.checkpoint import TrainingInterrupted

    def two_fits(d, checkpoint_dir=None, kill_at=None):
        d.fit(EXAMPLES)  # steps 0-2, meta from round(0.5·3) = 2
        d.config = d.config.replace(max_steps=4)  # steps 3-6, meta from 3 + round(0.5·4) = 5
        if kill_at is not None:
            step = d.step

            def step_then_signal(*args):
                out = step(*args)
                if d.steps_done == kill_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                return out

            d.step = step_then_signal
        return d.fit(EXAMPLES, checkpoint_dir=checkpoint_dir)

    whole = _distiller(meta_start=0.5, max_steps=3)
    history = two_fits(whole)
    assert [m["meta"] for m in history["train"]] == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(TrainingInterrupted):
        two_fits(_distiller(meta_start=0.5, max_steps=3), tmp_path, kill_at=4)
    resumed = _distiller(meta_start=0.5, max_steps=4)
    again = resumed.fit(EXAMPLES, checkpoint_dir=tmp_path, resume=True)
    assert [m["meta"] for m in again["train"]] == [0.0, 0.0, 1.0, 1.0]
    assert resumed.steps_done == whole.steps_done == 7
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(resumed.phi, whole.phi))
    assert all(torch.equal(a, b) for a, b in zip(resumed.student.state_dict().values(),
                                                 whole.student.state_dict().values()))


def test_replace_keeps_what_the_recipe_filled_and_a_new_recipe_fills_unset_fields():
    """run files call ``distill.replace(progress=...)``: the run must still print what the recipe set."""
    from metakd.config import DistillConfig

    cfg = DistillConfig(recipe="lgtm", teacher_ce_weight=0.3)
    again = cfg.replace(progress=False, teacher_student_weight=0.1)
    assert again.recipe_filled == {k: v for k, v in cfg.recipe_filled.items() if k != "teacher_student_weight"}
    assert again.teacher_student_weight == 0.1 and again.teacher_ce_weight == 0.3
    mpl = DistillConfig(teacher_ce_weight=0.3).replace(recipe="mpl")
    assert mpl.teacher_ce_weight == 0.3 and mpl.teacher_lr_ratio == 1.0 and "teacher_lr_ratio" in mpl.recipe_filled
