"""Fine-tuned teachers: cached by origin and reused across output directories, never reused for
another run's data, and a stopped fine-tuning continues where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import metakd.finetune
from metakd.cli import main
from metakd.finetune import finetune_classifier
from metakd.models import tiny_classifier

from .conftest import make_batch
from .test_data_files import news_rows
from .test_user_data_run import write_run


def _examples(n: int = 24) -> list[dict]:
    batch = make_batch(0, batch=n, labels=2, pad_rows=0)
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _signal_at(monkeypatch, call: int) -> None:
    """SIGTERM this process when the fine-tuning loop prepares its ``call``-th batch."""
    calls = {"n": 0}
    original = metakd.finetune.model_inputs

    def inputs(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(metakd.finetune, "model_inputs", inputs)


def test_finetuning_stops_on_sigterm_and_resumes_bit_identical(tmp_path, monkeypatch):
    from metakd.checkpoint import TrainingInterrupted

    settings = dict(epochs=2, lr=1e-3, batch_size=4, seed=3, max_steps=None)
    whole = tiny_classifier("bert", dropout=0.1, seed=5)
    finetune_classifier(whole, _examples(), progress=False, **settings)

    stopped = tiny_classifier("bert", dropout=0.1, seed=5)
    _signal_at(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM after step 3"):
        finetune_classifier(stopped, _examples(), progress=False, checkpoint_dir=tmp_path / "ck", **settings)
    monkeypatch.undo()
    resumed = tiny_classifier("bert", dropout=0.1, seed=5)
    said: list[str] = []
    losses = finetune_classifier(resumed, _examples(), progress=False, checkpoint_dir=tmp_path / "ck", log=said.append,
                                 **settings)
    assert len(losses) == 12 and said == [f"resuming the teacher's fine-tuning from the checkpoint in {tmp_path / 'ck'} "
                                          "at step 3 of 12"]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # other settings: the checkpoint is set aside, not resumed
    said.clear()
    finetune_classifier(tiny_classifier("bert"), _examples(), progress=False, checkpoint_dir=tmp_path / "ck",
                        log=said.append, **dict(settings, lr=2e-3))
    assert said[0].startswith(f"not resuming the fine-tuning checkpoint in {tmp_path / 'ck'}: written with other "
                              "settings (lr)")


def test_sigterm_during_finetuning_inside_distill(tmp_path, tiny_encoder, capsys, monkeypatch):
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "news.csv"
    data.write_text("\n".join(news_rows(60)) + "\n")
    run = write_run(tmp_path, tiny_encoder, data)
    _signal_at(monkeypatch, 2)
    assert main(["distill", run, "--no-progress"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert (f"metakd: stopped by SIGTERM after step 2; checkpoint in {tmp_path / 'out' / 'teacher_checkpoint'}; "
            f"continue with: metakd distill {run} --resume") in err
    monkeypatch.undo()
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    assert main(["distill", run, "--no-progress", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming the teacher's fine-tuning from the checkpoint" in err and "at step 2 of 3" in err
    assert not (tmp_path / "out" / "teacher_checkpoint").exists()


def test_teacher_reused_across_outputs_and_refitted_for_other_data(tmp_path, tiny_encoder, capsys, monkeypatch):
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "news.csv"
    data.write_text("\n".join(news_rows(60)) + "\n")
    run = write_run(tmp_path, tiny_encoder, data)
    assert main(["distill", run, "--no-progress"]) == 0
    first = capsys.readouterr().err
    assert "fine-tuned teacher saved to" in first and "cached in" in first
    assert main(["distill", run, "--no-progress", "--output", str(tmp_path / "other")]) == 0
    second = capsys.readouterr().err
    assert "reusing the fine-tuned teacher cached in" in second and "fine-tuning the teacher" not in second
    weights = "teacher/model.safetensors"
    assert (tmp_path / "other" / weights).read_bytes() == (tmp_path / "out" / weights).read_bytes()
    # the same output directory, other data: OUTPUT/teacher is not taken for it
    data.write_text("\n".join(news_rows(60, first_label="Weather")) + "\n")
    assert main(["distill", run, "--no-progress", "--overwrite"]) == 0
    third = capsys.readouterr().err
    assert f"the teacher in {tmp_path / 'out' / 'teacher'} was fine-tuned with other data, label_names" in third
    record = json.loads((tmp_path / "out" / "teacher" / "metakd_finetune.json").read_text())
    assert "Weather" in record["origin"]["label_names"]


def test_origin_covers_what_the_teacher_trains_on(tmp_path):
    from metakd.run import RunConfig
    from metakd.teacher_cache import origin_difference, teacher_origin

    data = tmp_path / "d.csv"
    data.write_text("text,label\ngood film,1\nbad film,0\n")

    def origin(**values):
        return teacher_origin(RunConfig.from_dict({"data": str(data), **values}), "some/hub-id", ["0", "1"])

    base = origin()
    # the student's subset is the teacher's too unless finetune.n_train says otherwise
    assert origin_difference(base, origin(n_train=1)) == ["n_train"]
    assert origin(finetune={"n_train": 5}, n_train=1)["n_train"] == 5
    assert origin_difference(base, origin(distill={"seed": 1})) == ["seed"]
    assert origin_difference(base, origin(teacher="other")) == ["teacher"]
    data.write_text("text,label\ngood film,1\nbad film,0\nfine,1\n")
    assert origin_difference(base, origin()) == ["data"]


@pytest.mark.slow
def test_sigterm_then_sigint_on_a_real_process(tmp_path, tiny_encoder):
    """A real ``metakd distill`` stopped during the teacher's fine-tuning by SIGTERM and at once
    SIGINT (a second Ctrl-C) ends in one line with the resume command, never a traceback."""
    data = tmp_path / "news.csv"
    data.write_text("\n".join(news_rows(60)) + "\n")
    run = write_run(tmp_path, tiny_encoder, data)
    with open(run) as fh:
        text = fh.read().replace("epochs: 1, max_steps: 3,", "epochs: 100000, max_steps: 100000,")
        text = text.replace("progress: false}", "progress: false, checkpoint_every: 5}")
    with open(run, "w") as fh:
        fh.write(text)
    env = dict(os.environ, METAKD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "metakd", "distill", run, "--no-progress"], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # wait until the fine-tuning runs: its first periodic checkpoint is written
        lines.append(line)
        if line.startswith("fine-tuning the teacher on"):
            break
    deadline = time.monotonic() + 120
    while not (tmp_path / "out" / "teacher_checkpoint" / "finetune_checkpoint.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "no fine-tuning checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode in (130, 128 + signal.SIGTERM), err[-3000:]
    last = rest.strip().splitlines()[-1]
    assert last.startswith("metakd: stop") and last.endswith(f"continue with: metakd distill {run} --resume"), last


def test_fine_tuning_a_headless_teacher_twice_gives_the_same_teacher(tmp_path, tiny_encoder, capsys, monkeypatch):
    # the encoder has no classification head: the fresh one is drawn from the seed, not from the RNG's state
    data = tmp_path / "news.csv"
    data.write_text("\n".join(news_rows(60)) + "\n")
    run = write_run(tmp_path, tiny_encoder, data)
    weights = []
    for name in ("a", "b"):
        monkeypatch.setenv("METAKD_CACHE", str(tmp_path / f"cache-{name}"))  # no cache shared: fine-tuned twice
        torch.manual_seed(len(name) + ord(name))  # whatever the caller's RNG holds
        assert main(["finetune-teacher", run, "--no-progress", "--output", str(tmp_path / name)]) == 0
        assert "fine-tuned teacher saved to" in capsys.readouterr().err
        weights.append((tmp_path / name / "teacher" / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]
