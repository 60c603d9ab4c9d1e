"""Learning-rate schedules (values, checkpoints), the validation split and the teacher tracker."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch

from metakd import DistillConfig, MetaDistiller
from metakd.checkpoint import CheckpointError, TrainingInterrupted, read_meta
from metakd.config import ConfigError
from metakd.data import split_quiz, split_validation, text_key
from metakd.models import tiny_classifier
from metakd.teacher_stats import label_stats, mean_entropy, temperature_for_entropy
from metakd.training import best_validation
from tests.conftest import make_batch
from tests.test_checkpoint import EXAMPLES, _assert_same, _state


def _distiller(mode: str, steps: int, **changes) -> MetaDistiller:
    teacher = tiny_classifier("bert", num_layers=2, hidden_size=16, seed=1, dropout=0.1)
    student = tiny_classifier("bert", num_layers=1, hidden_size=16, seed=2, dropout=0.1)
    cfg = DistillConfig(**{**dict(meta_update=mode, meta_grad="jvp", max_steps=steps, batch_size=4, quiz_fraction=0.25,
                                  student_lr=1e-2, teacher_lr=1e-2, pilot_lr=1e-1, progress=False, seed=3), **changes})
    return MetaDistiller(teacher, student, cfg)


def _expected(schedule: str, lr: float, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return lr * step / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / (total - warmup)
    return lr * (1 - progress) if schedule == "linear" else lr * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("student,teacher,warmup", [("linear", "cosine", dict(warmup_steps=2)),
                                                    ("cosine", "constant", dict(warmup_ratio=0.3)),
                                                    ("constant", "linear", {})])
def test_schedule_values_at_given_steps(student, teacher, warmup):
    d = _distiller("lora", 10, student_lr_schedule=student, teacher_lr_schedule=teacher, epochs=2, **warmup)
    history = d.fit(EXAMPLES)
    n_warm = warmup.get("warmup_steps", round(10 * warmup.get("warmup_ratio", 0)))
    for i, m in enumerate(history["train"]):
        assert m["student_lr"] == pytest.approx(_expected(student, 1e-2, i, 10, n_warm), abs=1e-12), i
        assert m["teacher_lr"] == pytest.approx(_expected(teacher, 1e-2, i, 10, n_warm), abs=1e-12), i


def test_schedule_config_errors_are_one_line():
    for bad, words in [(dict(student_lr_schedule="step"), "student_lr_schedule must be one of"),
                       (dict(warmup_steps=2, warmup_ratio=0.1), "not both"),
                       (dict(warmup_ratio=1.5), "warmup_ratio must be in [0, 1)"),
                       (dict(validation_fraction=0.95), "quiz_fraction + validation_fraction"),
                       (dict(track_teacher=0), "track_teacher must be a positive integer")]:
        with pytest.raises(ConfigError, match=None) as info:
            DistillConfig(**bad)
        assert words in str(info.value) and "\n" not in str(info.value)


def _stop_after(d: MetaDistiller, n: int) -> None:
    """SIGTERM this process after the distiller's n-th step (the loop then checkpoints and stops)."""
    real = d.step

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        if d.steps_done == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    d.step = step


def test_resume_with_schedules_is_bit_identical(tmp_path):
    changes = dict(student_lr_schedule="cosine", teacher_lr_schedule="linear", warmup_steps=2, validation_fraction=0.2)
    whole = _distiller("lora", 7, **changes)
    history = whole.fit(EXAMPLES, checkpoint_dir=tmp_path / "whole")
    first = _distiller("lora", 7, **changes)
    _stop_after(first, 3)
    with pytest.raises(TrainingInterrupted):
        first.fit(EXAMPLES, checkpoint_dir=tmp_path / "ckpt")
    assert read_meta(tmp_path / "ckpt")["schedulers"]["student"]["last_epoch"] == 3
    second = _distiller("lora", 7, **changes)
    resumed = second.fit(EXAMPLES, checkpoint_dir=tmp_path / "ckpt", resume=True)
    _assert_same(_state(second), _state(whole))
    for key in ("student_loss", "student_lr", "teacher_lr"):
        assert [m[key] for m in resumed["train"]] == [m[key] for m in history["train"]]
    assert second.student_scheduler.state_dict() == whole.student_scheduler.state_dict()
    scores = lambda best: (best["step"], *(best["validation"][k] for k in ("accuracy", "f1", "loss")))  # noqa: E731
    assert scores(resumed["best"]) == scores(history["best"])  # not the timings

    longer = _distiller("lora", 5, **changes)  # a schedule's shape depends on the run's length
    with pytest.raises(CheckpointError, match="schedules over 7 steps but this run has 5"):
        longer.fit(EXAMPLES, checkpoint_dir=tmp_path / "ckpt", resume=True)


def _item(ids: list[int], label: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), dtype=torch.long),
            "labels": torch.tensor(label)}


def test_validation_split_is_unique_by_text_and_disjoint():
    data = [_item([1, i % 30, 2], i % 2) for i in range(60)]  # every text twice
    train, quiz = split_quiz(data, 0.1, seed=5)
    eval_data = [_item([1, i, 2], 0) for i in range(10)]  # texts 0..9 are evaluation texts
    for seed in (0, 1):
        rest, val = split_validation(train, 0.2, seed, exclude=[quiz, eval_data])
        keys = [text_key(x) for x in val]
        assert len(keys) == len(set(keys)) == 11  # round(54 * 0.2) distinct texts
        banned = {text_key(x) for x in quiz + eval_data}
        assert not set(keys) & banned
        assert not set(keys) & {text_key(x) for x in rest}  # duplicates of a validation text leave training
        assert len(rest) + sum(1 for x in train if text_key(x) in set(keys)) == len(train)
    other = split_validation(train, 0.2, 1, exclude=[quiz, eval_data])[1]
    assert [text_key(x) for x in split_validation(train, 0.2, 0, exclude=[quiz, eval_data])[1]] != \
        [text_key(x) for x in other]  # by seed


def test_fit_reports_validation_and_best_step():
    d = _distiller("none", 6, validation_fraction=0.25, eval_every=2)
    eval_data = [{k: v[i] for k, v in make_batch(99, batch=4, length=9).items()} for i in range(4)]
    history = d.fit(EXAMPLES, eval_data=eval_data)
    assert [p["step"] for p in history["validation"]] == [2, 4, 6] == [p["step"] for p in history["eval"]]
    best = history["best"]
    assert best["validation"]["accuracy"] == max(p["accuracy"] for p in history["validation"])
    assert best["eval"]["step"] == best["step"]
    lm = {"validation": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}, {"step": 3, "loss": 1.0}]}
    assert best_validation(lm, "causal_lm")["step"] == 2  # lowest loss, earliest on ties


def test_eval_subset_scores_a_fixed_subset_until_the_last_point():
    eval_data = [{k: v[i] for k, v in make_batch(99, batch=6, length=9).items()} for i in range(6)]
    d = _distiller("none", 6, eval_every=2, eval_subset=2)
    history = d.fit(EXAMPLES, eval_data=eval_data)
    assert [(p["step"], p["eval_examples"]) for p in history["eval"]] == [(2, 2), (4, 2), (6, 6)]
    assert history["eval"][-1]["accuracy"] == d.evaluate(eval_data)["accuracy"]  # the last point: every example
    # a subset point scores the first two examples: the same first step, stopped there, scores them alike
    one = _distiller("none", 1)
    one.fit(EXAMPLES)
    assert history["eval"][0]["loss"] != history["eval"][-1]["loss"]
    two = _distiller("none", 2, eval_every=1, eval_subset=2).fit(EXAMPLES, eval_data=eval_data)["eval"]
    assert two[0]["eval_examples"] == 2 and two[0]["loss"] == pytest.approx(one.evaluate(eval_data[:2])["loss"])
    with pytest.raises(ConfigError, match="eval_subset"):
        DistillConfig(eval_subset=0)


def test_teacher_label_stats_and_tracking():
    zeros = torch.zeros(4, 2)
    stats = label_stats(zeros, torch.tensor([0, 1, 0, 1]), zeros, temperature=2.0)
    assert stats == {"teacher_accuracy": 0.5, "teacher_entropy": pytest.approx(math.log(2)),
                     "teacher_kl_from_initial": pytest.approx(0.0, abs=1e-7)}
    logits = torch.tensor([[3.0, -1.0], [0.5, 2.0], [-2.0, 1.0]])
    t = temperature_for_entropy(logits, mean_entropy(logits, 3.0))
    assert t == pytest.approx(3.0, rel=1e-4)
    d = _distiller("full", 4, eval_every=2, track_teacher=3, teacher_lr=0.1)
    eval_data = [{k: v[i] for k, v in make_batch(99, batch=4, length=9).items()} for i in range(4)]
    history = d.fit(EXAMPLES, eval_data=eval_data)
    kls = [p["teacher_kl_from_initial"] for p in history["eval"]]
    assert len(kls) == 2 and kls[-1] > 0  # the full meta-update moved the teacher's labels
