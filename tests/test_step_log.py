"""Step logs: ``fit(log_dir=...)`` writes one JSON line per step, TensorBoard events with the same
scalars under ``report_to="tensorboard"``, a clear error without the tensorboard package, resumed
logs drop the lines after the checkpoint, and the progress bar shows an ETA."""

from __future__ import annotations

import json
import math
import sys

import pytest

from metakd import ConfigError, DistillConfig, MetaDistiller
from metakd.models import tiny_classifier
from metakd.step_log import StepLog, check_report_to, format_eta, read_log

from .conftest import make_batch

KEYS = ("step", "student_loss", "inner_loss", "quiz_loss", "teacher_grad_norm", "skipped", "lr_student", "lr_teacher",
        "seconds", "memory_bytes", "energy_joules", "energy_estimated", "eta_seconds")


def _data(n: int = 24) -> list[dict]:
    batch = make_batch(0, batch=n)
    return [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
             "labels": batch["labels"][i]} for i in range(n)]


def _fit(tmp_path, steps: int = 3, **settings) -> MetaDistiller:
    cfg = DistillConfig(meta_update="lora", meta_grad="jvp", batch_size=4, max_steps=steps, progress=False,
                        student_lr=1e-3, teacher_lr=2e-4, **settings)
    d = MetaDistiller(tiny_classifier("gpt2", seed=1), tiny_classifier("gpt2", seed=2), cfg)
    d.history = d.fit(_data(), log_dir=tmp_path)
    return d


def test_fit_writes_one_json_line_per_step(tmp_path):
    d = _fit(tmp_path)
    lines = read_log(tmp_path)
    assert [line["step"] for line in lines] == [0, 1, 2]
    for line, metrics in zip(lines, d.history["train"]):
        assert set(KEYS) <= set(line)
        assert line["student_loss"] == pytest.approx(metrics["student_loss"])
        assert line["teacher_grad_norm"] == pytest.approx(metrics["teacher_grad_norm"]) and line["skipped"] == 0.0
        assert (line["lr_student"], line["lr_teacher"]) == (1e-3, 2e-4)
        assert line["seconds"] > 0 and line["memory_bytes"] > 0 and line["energy_joules"] >= 0
    assert lines[0]["memory_source"].startswith("peak RSS") and "energy_source" in lines[0]
    assert math.isnan(lines[0]["eta_seconds"]) and lines[1]["eta_seconds"] > 0 and lines[2]["eta_seconds"] == 0.0


def test_tensorboard_events_hold_the_same_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _fit(tmp_path, steps=2, report_to="tensorboard")
    lines = read_log(tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ("student_loss", "quiz_loss", "teacher_grad_norm", "lr_teacher", "memory_bytes", "energy_joules"):
        got = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert got == [(line["step"], pytest.approx(line[key], rel=1e-6)) for line in lines]


def test_missing_tensorboard_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"report_to='tensorboard' needs the tensorboard package: pip install"):
        check_report_to("tensorboard")
    check_report_to(None)  # nothing needed
    with pytest.raises(ConfigError, match="report_to must be one of 'tensorboard'"):
        DistillConfig(report_to="wandb")


def test_resumed_log_drops_the_steps_after_the_checkpoint(tmp_path):
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(5)) + '{"step": 5, "cut')
    log = StepLog(tmp_path, "cpu", total_steps=8, resume_step=3)
    log.begin()
    log.end({"step": 3.0, "student_loss": 0.5}, {}, steps_done=4)
    log.close()
    assert [line["step"] for line in read_log(tmp_path)] == [0, 1, 2, 3]
    StepLog(tmp_path, "cpu", total_steps=8).close()  # a new run starts a new log
    assert read_log(tmp_path) == []


def test_progress_bar_shows_an_eta(tmp_path, capsys):
    cfg = DistillConfig(meta_update="none", batch_size=4, max_steps=3, progress=True)
    d = MetaDistiller(tiny_classifier("bert", seed=1), tiny_classifier("bert", seed=2), cfg)
    d.fit(_data(), log_dir=tmp_path)
    err = capsys.readouterr().err
    assert "eta=0:00:00" in err  # the last step's postfix: nothing left
    assert format_eta(3725.2) == "1:02:05" and format_eta(math.nan) == "?"


def _tensorboard_steps(tmp_path, key="train/student_loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(key)]


def _log_steps(tmp_path, steps, offset: float, resume_step=None):
    log = StepLog(tmp_path, "cpu", total_steps=8, report_to="tensorboard", resume_step=resume_step)
    for s in steps:
        log.begin()
        log.end({"step": float(s), "student_loss": offset + s}, {}, steps_done=s + 1)
    log.close()


def test_resumed_tensorboard_events_hold_each_step_once(tmp_path):
    """Killed after step 4 with the checkpoint at step 3: the resumed run's steps 3 and 4 replace
    the first run's (purge_step), as in log.jsonl; a new run starts new events."""
    pytest.importorskip("tensorboard")
    _log_steps(tmp_path, range(5), offset=0.0)
    _log_steps(tmp_path, range(3, 8), offset=10.0, resume_step=3)
    assert _tensorboard_steps(tmp_path) == [(s, float(s if s < 3 else 10 + s)) for s in range(8)]
    assert [line["step"] for line in read_log(tmp_path)] == list(range(8))
    _log_steps(tmp_path, range(2), offset=20.0)  # a new run (--overwrite) into the same directory
    assert _tensorboard_steps(tmp_path) == [(0, 20.0), (1, 21.0)]
