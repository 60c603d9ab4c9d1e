"""The teacher guard: a teacher damaged by its meta-updates is caught at an evaluation, restored bit
for bit to its best state, its learning rate halved (optimizer and schedule), and after
``teacher_guard_trips`` trips it stops learning; a resumed run keeps all of it.

The damage is made certain: the validation labels are the teacher's own predictions (it starts at
100%), and the training labels are their opposites, which the teacher learns through its own CE term
(``teacher_ce_weight``) at a large learning rate.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metakd import DistillConfig, MetaDistiller
from metakd.checkpoint import read_meta
from metakd.models import tiny_classifier
from metakd.teacher_guard import TeacherGuard

from .conftest import make_batch


def _teacher() -> nn.Module:
    return tiny_classifier("bert", num_layers=2, hidden_size=16, seed=1)


def _student() -> nn.Module:
    return tiny_classifier("bert", num_layers=1, hidden_size=16, seed=2)


def _data():
    raw = [{k: v[i] for k, v in make_batch(s, batch=4, length=9).items()} for s in range(16) for i in range(4)]
    with torch.no_grad():
        ids = torch.stack([e["input_ids"] for e in raw])
        mask = torch.stack([e["attention_mask"] for e in raw])
        pred = _teacher()(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    validation = [{**e, "labels": pred[i]} for i, e in enumerate(raw[:16])]
    train = [{**e, "labels": 1 - pred[i]} for i, e in enumerate(raw[16:])]  # 36 after the quiz split: 9 steps
    return train, validation


TRAIN, VALIDATION = _data()


def _distiller(**changes) -> MetaDistiller:
    settings = dict(meta_update="lora", meta_grad="jvp", batch_size=4, quiz_fraction=0.25, student_lr=1e-2,
                    teacher_lr=0.3, teacher_grad_clip=None, meta_weight=0.0, teacher_ce_weight=1.0, eval_every=2,
                    progress=False, seed=3)
    settings.update(changes)
    return MetaDistiller(_teacher(), _student(), DistillConfig(**settings))


def _phi(d: MetaDistiller) -> list[torch.Tensor]:
    return [p.detach().clone() for p in d.phi]


# ---------------------------------------------------------------------------- the guard alone
def _scripted_guard(max_trips: int = 2):
    torch.manual_seed(0)
    phi = [nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(phi, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return phi, opt, sched, TeacherGuard(phi, points=1.0, max_trips=max_trips, enabled=True)


def _nudge(phi, opt):
    for p in phi:
        p.grad = torch.randn_like(p)
    opt.step()  # also leaves moments in the optimizer


def test_a_trip_restores_the_best_state_exactly_and_halves_the_lr():
    phi, opt, sched, guard = _scripted_guard()
    guard.begin(lambda: 0.80, step=0)
    _nudge(phi, opt)
    assert guard.check(1, lambda: 0.85, opt, sched) == {"teacher_validation_accuracy": 0.85, "teacher_guard_trip": 0.0}
    best = [p.detach().clone() for p in phi]  # the best state: step 1's
    _nudge(phi, opt)
    assert not all(torch.equal(p, b) for p, b in zip(phi, best))
    assert guard.check(2, lambda: 0.70, opt, sched)["teacher_guard_trip"] == 1.0
    assert all(torch.equal(p.detach(), b) for p, b in zip(phi, best))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05) and sched.base_lrs == [pytest.approx(0.05)]
    assert len(opt.state) == 0  # the moments that did the damage are gone
    assert guard.trips == [{"step": 2, "accuracy": 0.70, "restored_to_step": 1, "restored_accuracy": 0.85,
                            "teacher_lr": pytest.approx(0.05)}]
    assert not guard.stopped
    # within teacher_guard_points of the start: no trip, and not a new best
    assert guard.check(3, lambda: 0.795, opt, sched)["teacher_guard_trip"] == 0.0
    assert guard.best_step == 1
    _nudge(phi, opt)
    guard.check(4, lambda: 0.10, opt, sched)
    assert guard.stopped and len(guard.trips) == 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025) and sched.base_lrs == [pytest.approx(0.025)]
    assert all(torch.equal(p.detach(), b) for p, b in zip(phi, best))
    assert guard.summary()["trip_count"] == 2 and guard.summary()["stopped"]


def test_guard_state_round_trips():
    phi, opt, sched, guard = _scripted_guard()
    guard.begin(lambda: 0.8, 0)
    _nudge(phi, opt)
    guard.check(1, lambda: 0.9, opt, sched)
    _nudge(phi, opt)
    guard.check(2, lambda: 0.1, opt, sched)
    meta, tensors = guard.state()
    other = TeacherGuard([nn.Parameter(torch.zeros_like(p)) for p in phi], 1.0, 2, True)
    other.load(meta, tensors)
    assert other.summary() == guard.summary()
    assert all(torch.equal(a, b) for a, b in zip(other.best_state, guard.best_state))


def test_a_disabled_guard_never_acts():
    phi, opt, sched, _ = _scripted_guard()
    guard = TeacherGuard(phi, 1.0, 1, enabled=False)
    guard.begin(lambda: 1.0, 0)
    before = [p.detach().clone() for p in phi]
    assert guard.check(1, lambda: 0.0, opt, sched) == {}
    assert not guard.trips and all(torch.equal(p, b) for p, b in zip(phi, before))
    assert opt.param_groups[0]["lr"] == 0.1


# ---------------------------------------------------------------------------- in a run
def test_a_damaged_teacher_is_restored_and_stops_learning():
    d = _distiller(teacher_guard_trips=1)
    start = _phi(d)
    history = d.fit(TRAIN, validation_data=VALIDATION)
    summary = history["teacher_guard"]
    assert summary["start_accuracy"] == 1.0
    assert summary["trip_count"] == 1 and summary["stopped"]
    assert summary["trips"][0]["step"] == 2 and summary["trips"][0]["accuracy"] < 0.99
    # restored to the best state (the teacher as given) bit for bit, and it never moved again
    assert all(torch.equal(p.detach(), s) for p, s in zip(d.phi, start))
    assert [m["meta"] for m in history["train"]] == [1.0, 1.0] + [0.0] * 7
    assert d.teacher_optimizer.param_groups[0]["lr"] == pytest.approx(0.15)
    assert d.teacher_scheduler.base_lrs == [pytest.approx(0.15)]
    assert [p["teacher_guard_trip"] for p in history["validation"]] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert history["validation"][-1]["teacher_validation_accuracy"] == 1.0


def test_the_guard_stops_after_teacher_guard_trips_and_halves_a_scheduled_lr():
    """Each trip halves the teacher's lr for the rest of the schedule (its base too, or the next
    scheduler step would undo it); after the third trip no step is a meta-step."""
    off = _distiller(teacher_guard=False, teacher_lr_schedule="linear")
    off_history = off.fit(TRAIN, validation_data=VALIDATION)
    on = _distiller(teacher_guard_trips=3, teacher_lr_schedule="linear")
    history = on.fit(TRAIN, validation_data=VALIDATION)
    trips = [t["step"] for t in history["teacher_guard"]["trips"]]
    assert trips == [2, 4, 6] and history["teacher_guard"]["stopped"]
    assert [m["meta"] for m in history["train"]] == [1.0] * 6 + [0.0] * 3
    for i, m in enumerate(history["train"]):
        ref = off_history["train"][min(i, 6)]  # the schedule counts teacher steps: it stands after the stop
        halvings = sum(step <= i for step in trips)  # a trip at evaluation step s acts from step index s on
        assert m["teacher_lr"] == pytest.approx(ref["teacher_lr"] * 0.5 ** halvings), i


def test_guard_off_does_not_trip():
    d = _distiller(teacher_guard=False)
    start = _phi(d)
    history = d.fit(TRAIN, validation_data=VALIDATION)
    assert "teacher_guard" not in history and not d.guard.trips
    assert all(m["meta"] == 1.0 for m in history["train"])
    assert not all(torch.equal(p.detach(), s) for p, s in zip(d.phi, start))
    assert d.teacher_optimizer.param_groups[0]["lr"] == pytest.approx(0.3)
    assert all("teacher_guard_trip" not in p for p in history["validation"])


def _state(d: MetaDistiller) -> dict[str, torch.Tensor]:
    out = {f"s.{k}": v for k, v in d.student_module.state_dict().items()}
    out.update({f"t.{n}": p.detach() for n, p in d.teacher.named_parameters() if p.requires_grad})
    for prefix, opt in (("os", d.student_optimizer), ("ot", d.teacher_optimizer)):
        for i, entries in opt.state_dict()["state"].items():
            out.update({f"{prefix}.{i}.{k}": v for k, v in entries.items() if isinstance(v, torch.Tensor)})
    out.update({f"g.{i}": t for i, t in enumerate(d.guard.best_state or [])})
    return out


def _untimed(points: list[dict]) -> list[dict]:
    """History points without their wall-clock figures."""
    return [{k: v for k, v in p.items() if "seconds" not in k and "per_second" not in k} for p in points]


@pytest.mark.parametrize("trips,kill_at", [(3, 3), (2, 5)], ids=["watching", "stopped"])
def test_resume_after_a_trip_is_bit_identical(tmp_path, trips, kill_at):
    """Killed after a trip (still watching, or already stopped) and resumed: the very run an
    uninterrupted one is. The kill falls between evaluations: a run cut short by max_steps writes
    its checkpoint before its final evaluation, as a killed run would have."""
    settings = dict(teacher_guard_trips=trips, teacher_lr_schedule="constant")
    whole = _distiller(**settings)
    history = whole.fit(TRAIN, validation_data=VALIDATION, checkpoint_dir=tmp_path / "whole")
    assert history["teacher_guard"]["trip_count"] >= 1

    _distiller(max_steps=kill_at, **settings).fit(TRAIN, validation_data=VALIDATION, checkpoint_dir=tmp_path / "ckpt")
    saved = read_meta(tmp_path / "ckpt")
    assert saved["steps_done"] == kill_at and saved["teacher_guard"]["trips"]
    assert saved["teacher_guard"]["stopped"] == (kill_at == 5)
    resumed = _distiller(**settings)
    again = resumed.fit(TRAIN, validation_data=VALIDATION, checkpoint_dir=tmp_path / "ckpt", resume=True)

    a, b = _state(resumed), _state(whole)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for key in ("train", "validation"):
        assert _untimed(again[key]) == _untimed(history[key]), key
    assert again["teacher_guard"] == history["teacher_guard"]
    assert resumed.teacher_optimizer.param_groups[0]["lr"] == whole.teacher_optimizer.param_groups[0]["lr"]
    assert resumed.teacher_scheduler.base_lrs == whole.teacher_scheduler.base_lrs


def _lm_data():
    """LM blocks whose validation labels are the tiny teacher's own next-token predictions (it starts
    at 100% next-token accuracy) and whose training labels are the token after each (which its own
    CE term then teaches it)."""
    from metakd.models import tiny_causal_lm

    from .test_teacher_objective import lm_batch

    blocks = [lm_batch(s, pad_rows=0) for s in range(10)]
    with torch.no_grad():
        teacher = tiny_causal_lm("gpt2", num_layers=2, seed=1)
        preds = [teacher(input_ids=b["input_ids"]).logits[:, :-1].argmax(-1) for b in blocks]

    def relabel(b, nxt):
        labels = b["labels"].clone()
        labels[:, 1:] = nxt
        return [{"input_ids": b["input_ids"][i], "attention_mask": b["attention_mask"][i], "labels": labels[i]}
                for i in range(labels.shape[0])]

    validation = [x for b, p in zip(blocks[:2], preds[:2]) for x in relabel(b, p)]
    train = [x for b, p in zip(blocks[2:], preds[2:]) for x in relabel(b, (p + 1) % 64)]
    return train, validation


def _lm_distiller(**changes) -> MetaDistiller:
    from metakd.models import tiny_causal_lm

    settings = dict(task="causal_lm", meta_update="lora", meta_grad="jvp", batch_size=4, quiz_fraction=0.25,
                    progress=False, seed=3, eval_every=2)
    settings.update(changes)
    return MetaDistiller(tiny_causal_lm("gpt2", num_layers=2, seed=1), tiny_causal_lm("gpt2", num_layers=1, seed=2),
                         DistillConfig(**settings))


def test_a_causal_lm_teacher_is_watched_by_its_next_token_accuracy():
    """A causal LM has no class accuracy: the guard watches the teacher's next-token accuracy on the
    validation blocks (it raised KeyError 'accuracy' at the start of fit once)."""
    train, validation = _lm_data()
    d = _lm_distiller(max_steps=2)
    history = d.fit(train, validation_data=validation)
    assert [m["meta"] for m in history["train"]] == [1.0, 1.0]
    summary = history["teacher_guard"]
    assert summary["watching"] and summary["start_accuracy"] == 1.0
    assert history["validation"][-1]["teacher_validation_accuracy"] == summary["final_accuracy"]


def test_a_damaged_causal_lm_teacher_trips_the_guard_and_is_restored():
    train, validation = _lm_data()
    d = _lm_distiller(max_steps=4, teacher_lr=0.3, teacher_grad_clip=None, meta_weight=0.0, teacher_ce_weight=1.0,
                      teacher_guard_trips=1)
    start = _phi(d)
    history = d.fit(train, validation_data=validation)
    summary = history["teacher_guard"]
    assert summary["trip_count"] == 1 and summary["stopped"] and summary["trips"][0]["accuracy"] < 0.99
    assert all(torch.equal(p.detach(), s) for p, s in zip(d.phi, start))
    assert [m["meta"] for m in history["train"]] == [1.0, 1.0, 0.0, 0.0]
