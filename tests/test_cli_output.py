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


@pytest.mark.parametrize("command", ["distill", "finetune-teacher"])
def test_a_second_signal_ends_in_one_line(tmp_path, capsys, monkeypatch, command):
    import metakd.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what StopSignals raises on the second SIGTERM/SIGINT

    monkeypatch.setattr(metakd.run, "distill", interrupted)
    monkeypatch.setattr(metakd.run, "finetune_teacher", interrupted)
    run = _run_file(tmp_path, tmp_path / "out")
    assert main([command, run, "--set", "n_train=10"]) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    again = " --resume" if command == "distill" else ""
    assert lines == [f"metakd: stopped at once by a second signal; the last checkpoint in {tmp_path / 'out'} is "
                     f"kept; continue with: metakd {command} {run}{again} --set n_train=10"]
