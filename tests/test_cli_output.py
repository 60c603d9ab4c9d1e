"""The output directory is never clobbered or silently restarted, and a second signal ends in one
line with the resume command (in process: no models are loaded)."""

from __future__ import annotations

import pytest

from metakd.cli import main
from metakd.outputs import resume_decision


def _run_file(tmp_path, output):
    run = tmp_path / "run.yaml"
    run.write_text(f"teacher: embedded\noutput: {output}\n")
    return str(run)


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["distill", _run_file(tmp_path, out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"metakd: error: --resume: there is no checkpoint in {out} to continue from; run without --resume "
                   "to start afresh, or pass --resume-if-present to resume only when there is one")
    assert resume_decision(out, resume=True, resume_if_present=True) is False  # starts afresh, says so


def test_a_finished_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "distilled").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    assert main(["distill", _run_file(tmp_path, out)]) == 2
    assert (f"{out} holds a previous run (metrics.json, distilled); pass --overwrite to replace it"
            in capsys.readouterr().err)
    assert (out / "metrics.json").read_text() == "{}"
    (out / "checkpoint").mkdir()  # stale state is cleared when overwriting
    assert resume_decision(out, overwrite=True) is False and not (out / "checkpoint").exists()


def _interrupt(monkeypatch, bar: bool = False):
    import metakd.run

    def interrupted(*args, **kwargs):
        if bar:  # what training.py leaves behind: a bar still open, its line not ended
            from tqdm.auto import tqdm

            progress = tqdm(total=10, desc="distil (lora)", leave=False)
            progress.update(4)
        raise KeyboardInterrupt  # what StopSignals raises on the second SIGTERM/SIGINT

    monkeypatch.setattr(metakd.run, "distill", interrupted)
    monkeypatch.setattr(metakd.run, "finetune_teacher", interrupted)


def _made(out, what):
    import json

    if what == "checkpoint":
        (out / "checkpoint").mkdir(parents=True)
        (out / "checkpoint" / "checkpoint.json").write_text(json.dumps({"steps_done": 4}))
    elif what == "teacher_checkpoint":
        (out / "teacher_checkpoint").mkdir(parents=True)
        (out / "teacher_checkpoint" / "finetune_checkpoint.json").write_text(json.dumps({"settings": {},
                                                                                         "steps_done": 3}))
    elif what == "previous run":
        (out / "distilled").mkdir(parents=True)
        (out / "metrics.json").write_text("{}")


@pytest.mark.parametrize("command", ["distill", "finetune-teacher"])
@pytest.mark.parametrize("there", ["nothing", "previous run", "checkpoint", "teacher_checkpoint"])
def test_a_second_signal_ends_in_one_line_that_says_what_is_there(tmp_path, capsys, monkeypatch, command, there):
    _interrupt(monkeypatch)
    out = tmp_path / "out"
    _made(out, there)
    run = _run_file(tmp_path, out)
    assert main([command, run, "--set", "n_train=10"]) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    kept, flag = {
        "checkpoint": (f"the last checkpoint in {out / 'checkpoint'} (step 4) is kept; continue", " --resume"),
        "teacher_checkpoint": (f"the teacher's fine-tuning checkpoint in {out / 'teacher_checkpoint'} (step 3) is "
                               "kept; continue", " --resume"),
        "previous run": (f"no checkpoint was written yet, so there is nothing in {out} to resume; start again",
                         " --overwrite"),
        "nothing": (f"no checkpoint was written yet, so there is nothing in {out} to resume; start again", ""),
    }[there]
    if command == "finetune-teacher":
        flag = ""  # it resumes its own checkpoint by itself, and has no --resume/--overwrite
        if there == "checkpoint":  # a distillation checkpoint is not the teacher's
            kept = f"no checkpoint was written yet, so there is nothing in {out} to resume; start again"
    assert lines == [f"metakd: stopped at once by a second signal; {kept} with: metakd {command} {run}{flag} "
                     "--set n_train=10"]


def test_the_stop_line_is_not_glued_to_a_progress_bar(tmp_path, capsys, monkeypatch):
    import re

    _interrupt(monkeypatch, bar=True)
    run = _run_file(tmp_path, tmp_path / "out")
    assert main(["distill", run]) == 130
    err = capsys.readouterr().err
    assert "distil (lora)" in err
    line = next(part for part in re.split(r"[\r\n]", err) if "second signal" in part)
    assert line.startswith("metakd: stopped at once"), repr(err[-300:])
    assert err.endswith(" start again with: metakd distill " + run + "\n")
