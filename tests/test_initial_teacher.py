"""The initial teacher of the anchor term: logits kept per example equal a fresh forward, later epochs
run no forward, and a resumed run reads the kept logits an uninterrupted one does."""

from __future__ import annotations

import torch

from metakd import DistillConfig, MetaDistiller
from metakd.checkpoint import read_meta
from metakd.initial_teacher import InitialTeacher, row_keys
from metakd.models import tiny_classifier

from .conftest import make_batch


def _data(n: int = 12):
    return [{k: v[i] for k, v in make_batch(s, batch=4, length=9).items()} for s in range(n) for i in range(4)]


def _distiller(**changes) -> MetaDistiller:
    settings = dict(meta_update="lora", meta_grad="jvp", batch_size=4, quiz_fraction=0.25, student_lr=1e-2,
                    teacher_lr=0.05, teacher_anchor_weight=1.0, progress=False, seed=5, teacher_guard=False)
    settings.update(changes)
    return MetaDistiller(tiny_classifier("bert", num_layers=2, hidden_size=16, seed=1),
                         tiny_classifier("bert", num_layers=1, hidden_size=16, seed=2), DistillConfig(**settings))


def test_row_keys_ignore_padding_and_tell_rows_apart():
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 9], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    keys = row_keys({"input_ids": ids, "attention_mask": mask})
    assert len(set(keys)) == 3
    padded = row_keys({"input_ids": torch.tensor([[5, 6, 7, 0, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0, 0, 0]])})
    assert padded[0] == keys[0]


def test_kept_logits_are_the_initial_teachers_and_later_epochs_run_no_forward():
    d = _distiller(epochs=2)
    teacher = tiny_classifier("bert", num_layers=2, hidden_size=16, seed=1).eval()
    history = d.fit(_data())
    steps_per_epoch = len(history["train"]) // 2
    assert d.initial_teacher.forwards == steps_per_epoch  # every batch of epoch 1 was new; none of epoch 2
    assert history["train"][-1]["teacher_anchor_kl"] > 0  # the teacher moved away from its start
    batch = make_batch(0, batch=4, length=9)
    with torch.no_grad():
        fresh = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keys = row_keys({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    kept = [d.initial_teacher.kept[k] for k in keys if k in d.initial_teacher.kept]
    assert kept, "the training rows of batch 0 were kept"
    rows = [i for i, k in enumerate(keys) if k in d.initial_teacher.kept]
    torch.testing.assert_close(torch.stack(kept), fresh[rows], rtol=1e-5, atol=1e-6)


def test_an_uncached_initial_teacher_runs_a_forward_every_time():
    calls = []
    initial = InitialTeacher(tiny_classifier("bert", num_layers=1, hidden_size=16, seed=1), cache=False)
    inputs = {"input_ids": torch.tensor([[3, 4]]), "attention_mask": torch.tensor([[1, 1]])}
    for _ in range(3):
        initial.logits(inputs, lambda phi: calls.append(1) or torch.zeros(1, 2))
    assert len(calls) == 3 and initial.forwards == 3 and not initial.kept


def test_resume_reads_the_kept_logits_bit_identically(tmp_path):
    data = _data()
    whole = _distiller(epochs=2)
    history = whole.fit(data, checkpoint_dir=tmp_path / "whole")
    _distiller(epochs=2, max_steps=11).fit(data, checkpoint_dir=tmp_path / "ckpt")
    assert read_meta(tmp_path / "ckpt")["steps_done"] == 11
    resumed = _distiller(epochs=2)
    again = resumed.fit(data, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert resumed.initial_teacher.kept.keys() == whole.initial_teacher.kept.keys()
    for k, v in whole.initial_teacher.kept.items():
        assert torch.equal(resumed.initial_teacher.kept[k], v)
    for p, q in zip(resumed.phi, whole.phi):
        assert torch.equal(p, q)
    drop = ("seconds", "per_second")
    strip = lambda pts: [{k: v for k, v in p.items() if not any(x in k for x in drop)} for p in pts]  # noqa: E731
    assert strip(again["train"][-5:]) == strip(history["train"][-5:])
