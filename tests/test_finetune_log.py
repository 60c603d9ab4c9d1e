"""The teacher's fine-tuning is watchable without a progress bar: a line every REPORT_SECONDS and
after the last step, and one JSON line per step in OUTPUT/teacher_log.jsonl (issue 31, item 4)."""

from __future__ import annotations

import os
import signal

import pytest

import metakd.finetune
from metakd.cli import main
from metakd.finetune import finetune_classifier
from metakd.models import tiny_classifier
from metakd.step_log import FINETUNE_LOG_FILE, read_log

from .test_data_files import news_rows
from .test_teacher_reuse import _examples, _signal_at
from .test_user_data_run import write_run


def test_lines_without_a_bar_and_a_step_log(tmp_path):
    said: list[str] = []
    losses = finetune_classifier(tiny_classifier("bert", seed=5), _examples(), epochs=2, lr=1e-3, batch_size=4,
                                 progress=False, log=said.append, log_dir=tmp_path, report_every=0)
    assert len(losses) == 12
    assert [line.split(",")[0] for line in said] == [f"fine-tune teacher: step {i}/12" for i in range(1, 13)]
    assert said[-1].endswith("0:00:00 left") and f"loss {losses[-1]:.4f} (mean of the last 1)" in said[-1]
    lines = read_log(tmp_path, FINETUNE_LOG_FILE)
    assert [line["step"] for line in lines] == list(range(12))
    assert [line["loss"] for line in lines] == pytest.approx(losses)
    # each step's own rate: one warm-up step, then linear decay over the other 11
    assert [line["lr_teacher"] for line in lines] == pytest.approx([1e-3 * min(i + 1, (12 - i) / 11)
                                                                    for i in range(12)])
    assert {"seconds", "memory_bytes", "energy_joules", "eta_seconds"} <= set(lines[-1])
    # a long interval: one line, after the last step
    said.clear()
    finetune_classifier(tiny_classifier("bert", seed=5), _examples(), epochs=1, lr=1e-3, batch_size=4,
                        progress=False, log=said.append, report_every=3600)
    assert len(said) == 1 and said[0].startswith("fine-tune teacher: step 6/6, loss ") and "(mean of the last 6)" in said[0]


def test_a_resumed_fine_tuning_continues_its_log(tmp_path, monkeypatch):
    from metakd.checkpoint import TrainingInterrupted

    settings = dict(epochs=2, lr=1e-3, batch_size=4, seed=3, progress=False, log_dir=tmp_path,
                    checkpoint_dir=tmp_path / "ck")
    _signal_at(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted):
        finetune_classifier(tiny_classifier("bert", seed=5), _examples(), **settings)
    monkeypatch.undo()
    assert [line["step"] for line in read_log(tmp_path, FINETUNE_LOG_FILE)] == [0, 1, 2]
    losses = finetune_classifier(tiny_classifier("bert", seed=5), _examples(), **settings)
    lines = read_log(tmp_path, FINETUNE_LOG_FILE)
    assert [line["step"] for line in lines] == list(range(12))
    assert [line["loss"] for line in lines] == pytest.approx(losses)


def test_finetune_teacher_without_progress_reports_and_logs(tmp_path, tiny_encoder, capsys, monkeypatch):
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(metakd.finetune, "REPORT_SECONDS", 0.0)
    data = tmp_path / "news.csv"
    data.write_text("\n".join(news_rows(60)) + "\n")
    run = write_run(tmp_path, tiny_encoder, data)
    assert main(["finetune-teacher", run, "--no-progress"]) == 0
    err = capsys.readouterr().err
    for step in (1, 2, 3):
        assert f"fine-tune teacher: step {step}/3, loss " in err
    assert [line["step"] for line in read_log(tmp_path / "out", FINETUNE_LOG_FILE)] == [0, 1, 2]
