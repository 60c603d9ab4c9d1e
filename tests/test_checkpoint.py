"""Checkpoints: a stopped or killed run resumes to the very same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from metakd import DistillConfig, MetaDistiller
from metakd.checkpoint import CheckpointError, TrainingInterrupted, load_checkpoint, read_meta
from metakd.models import tiny_classifier
from tests.conftest import make_batch, save_tiny_teacher

EXAMPLES = [{k: v[i] for k, v in make_batch(s, batch=4, length=9).items()} for s in range(12) for i in range(4)]


def _distiller(mode: str, steps: int, meta_grad: str = "jvp", **changes) -> MetaDistiller:
    teacher = tiny_classifier("bert", num_layers=3, hidden_size=16, seed=1, dropout=0.1)
    student = tiny_classifier("bert", num_layers=2, hidden_size=16, seed=2, dropout=0.1)
    cfg = DistillConfig(meta_update=mode, meta_grad=meta_grad, max_steps=steps, batch_size=4, quiz_fraction=0.25,
                        student_lr=1e-2, teacher_lr=1e-2, pilot_lr=1e-1, progress=False, seed=3, **changes)
    return MetaDistiller(teacher, student, cfg)


def _state(d: MetaDistiller) -> dict[str, torch.Tensor]:
    out = {f"s.{k}": v for k, v in d.student_module.state_dict().items()}
    out.update({f"t.{n}": p.detach() for n, p in d.teacher.named_parameters() if p.requires_grad})
    for prefix, opt in (("os", d.student_optimizer), ("ot", d.teacher_optimizer)):
        if opt is not None:
            for i, entries in opt.state_dict()["state"].items():
                out.update({f"{prefix}.{i}.{k}": v for k, v in entries.items() if isinstance(v, torch.Tensor)})
    return out


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("mode,meta_grad", [("none", "jvp"), ("lora", "jvp"), ("lora", "higher"), ("full", "finite_diff")])
def test_stopped_and_resumed_run_is_bit_identical(tmp_path, mode, meta_grad):
    whole = _distiller(mode, 7, meta_grad)
    start = {k: v.clone() for k, v in _state(whole).items() if k.startswith(("s.", "t."))}
    history = whole.fit(EXAMPLES, checkpoint_dir=tmp_path / "whole", resume=False)
    assert any(not torch.equal(start[k], _state(whole)[k]) for k in start)  # it trained

    first = _distiller(mode, 3, meta_grad)  # killed after step 3: its checkpoint is all that survives
    first.fit(EXAMPLES, checkpoint_dir=tmp_path / "ckpt")
    assert read_meta(tmp_path / "ckpt")["steps_done"] == 3
    second = _distiller(mode, 7, meta_grad)
    resumed = second.fit(EXAMPLES, checkpoint_dir=tmp_path / "ckpt", resume=True)
    _assert_same(_state(second), _state(whole))
    assert [m["student_loss"] for m in resumed["train"]] == [m["student_loss"] for m in history["train"]]
    assert second.steps_done == whole.steps_done == 7


def test_a_resumed_second_fit_replays_that_fits_batches(tmp_path):
    """The checkpoint keeps the shuffle generators' states at the start of its fit: a fresh process
    resuming the second fit of a run continues it, not the first fit's batches."""
    whole = _distiller("lora", 3)
    whole.fit(EXAMPLES)
    whole.config = whole.config.replace(max_steps=4)
    whole.fit(EXAMPLES)
    first = _distiller("lora", 3)
    first.fit(EXAMPLES)
    first.config = first.config.replace(max_steps=2)  # the second fit stops after 2 of its 4 steps
    first.fit(EXAMPLES, checkpoint_dir=tmp_path)
    meta = read_meta(tmp_path)
    assert (meta["steps_done"], meta["fit_start_step"]) == (5, 3)
    resumed = _distiller("lora", 4)
    resumed.fit(EXAMPLES, checkpoint_dir=tmp_path, resume=True)
    assert resumed.steps_done == whole.steps_done == 7
    _assert_same(_state(resumed), _state(whole))


def test_periodic_checkpoints_and_files_are_safetensors_and_json(tmp_path):
    d = _distiller("lora", 5, checkpoint_every=2)
    saves = []
    import metakd.checkpoint as ckpt

    real = ckpt.save_checkpoint

    def spy(directory, distiller, *args):
        saves.append(distiller.steps_done)
        return real(directory, distiller, *args)

    ckpt.save_checkpoint = spy
    try:
        d.fit(EXAMPLES, checkpoint_dir=tmp_path)
    finally:
        ckpt.save_checkpoint = real
    assert saves == [2, 4, 5]  # every 2 steps and at the end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "state.safetensors"]


def test_a_signal_stops_after_the_step_with_a_checkpoint(tmp_path):
    d = _distiller("lora", 7)
    step = d.step

    def step_then_signal(*args, **kwargs):
        out = step(*args, **kwargs)
        if d.steps_done == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    d.step = step_then_signal
    with pytest.raises(TrainingInterrupted) as stop:
        d.fit(EXAMPLES, checkpoint_dir=tmp_path)
    assert stop.value.step == 2 and stop.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    resumed = _distiller("lora", 7)
    resumed.fit(EXAMPLES, checkpoint_dir=tmp_path, resume=True)
    whole = _distiller("lora", 7)
    whole.fit(EXAMPLES)
    _assert_same(_state(resumed), _state(whole))


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path, caplog):
    d = _distiller("none", 2)
    d.fit(EXAMPLES, checkpoint_dir=tmp_path / "empty", resume=True)
    assert d.steps_done == 2 and "no checkpoint" in caplog.text


def test_corrupt_or_mismatched_checkpoints_are_refused(tmp_path):
    _distiller("lora", 2).fit(EXAMPLES, checkpoint_dir=tmp_path)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    with pytest.raises(CheckpointError, match="temperature"):
        load_checkpoint(tmp_path, _distiller("lora", 4, temperature=5.0))
    with pytest.raises(CheckpointError, match="different student"):
        other = MetaDistiller(tiny_classifier("bert", num_layers=3, hidden_size=16, seed=1),
                              tiny_classifier("bert", num_layers=1, hidden_size=16, seed=2),
                              _distiller("lora", 4).config)
        load_checkpoint(tmp_path, other)
    state = tmp_path / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-3] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path, _distiller("lora", 4))
    (tmp_path / "checkpoint.json").write_text(json.dumps(dict(meta, version=0)))
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(tmp_path, _distiller("lora", 4))
    (tmp_path / "checkpoint.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path, _distiller("lora", 4))


# ---------------------------------------------------------------------------- a real process, killed
@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt-run")
    save_tiny_teacher(root / "teacher", dropout=0.1)

    def write(name: str, steps: int) -> str:
        path = root / f"{name}.yaml"
        path.write_text(f"""
teacher: {root / "teacher"}
student: "first:2"
data: embedded
n_train: 160
n_eval: 16
distill: {{meta_update: lora, meta_grad: jvp, max_steps: {steps}, batch_size: 4, max_length: 16, progress: false,
          checkpoint_every: 1}}
""")
        return str(path)

    return write


def _metakd(*args, wait=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "metakd", *args, "--no-progress"]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_step(directory, step: int, proc, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            done = json.loads((directory / "checkpoint.json").read_text())["steps_done"]
            if done >= step:
                return done
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


STEPS = 24


@pytest.fixture(scope="module")
def uninterrupted(run_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    whole = _metakd("distill", run_file("run", STEPS), "--output", str(out))
    assert whole.returncode == 0, whole.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_process_resumes_to_the_uninterrupted_result(run_file, uninterrupted, tmp_path, how):
    steps = STEPS
    config = run_file("run", steps)
    out = tmp_path / "killed"
    proc = _metakd("distill", config, "--output", str(out), wait=False)
    _wait_for_step(out / "checkpoint", 3, proc)
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=120)
    if how == "SIGTERM":
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "--resume" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    stopped_at = read_meta(out / "checkpoint")["steps_done"]
    assert 3 <= stopped_at < steps and not (out / "distilled").exists()

    resumed = _metakd("distill", config, "--output", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from the checkpoint in {out / 'checkpoint'} at step {stopped_at}" in resumed.stderr
    for name in ("student/model.safetensors", "teacher_adapters/adapter_model.safetensors"):
        assert (out / "distilled" / name).read_bytes() == (uninterrupted / "distilled" / name).read_bytes(), name
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((uninterrupted / "metrics.json").read_text())
    assert a["student"]["accuracy"] == b["student"]["accuracy"] and a["steps"] == b["steps"] == steps


@pytest.mark.parametrize("mode", ["none", "lora"])
def test_same_seed_and_config_give_the_same_result(mode):
    a, b = _distiller(mode, 4), _distiller(mode, 4)  # dropout 0.1: the RNG stream matters
    a.fit(EXAMPLES)
    b.fit(EXAMPLES)
    _assert_same(_state(a), _state(b))
    other = _distiller(mode, 4)
    other.config = other.config.replace(seed=4)  # another seed: another data order and dropout stream
    other.fit(EXAMPLES)
    assert any(not torch.equal(x, y) for x, y in zip(_state(a).values(), _state(other).values()))



def test_resume_with_feature_projections_and_evaluations_is_bit_identical(tmp_path):
    changes = dict(feature_layers={1: 2}, feature_weight=0.5, eval_every=2)  # JSON turns the keys into strings
    whole = _distiller("lora", 6, **changes)
    whole.fit(EXAMPLES, eval_data=EXAMPLES[:8])
    _distiller("lora", 3, **changes).fit(EXAMPLES, eval_data=EXAMPLES[:8], checkpoint_dir=tmp_path)
    resumed = _distiller("lora", 6, **changes)
    resumed.fit(EXAMPLES, eval_data=EXAMPLES[:8], checkpoint_dir=tmp_path, resume=True)
    _assert_same(_state(resumed), _state(whole))
    # evaluating does not shift the training RNG stream: the same run without evaluations trains the same
    quiet = _distiller("lora", 6, **changes)
    quiet.fit(EXAMPLES)
    _assert_same(_state(quiet), _state(whole))


def test_resume_on_other_data_is_refused(tmp_path):
    _distiller("none", 2).fit(EXAMPLES, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="other data"):
        _distiller("none", 4).fit(EXAMPLES[:-4], checkpoint_dir=tmp_path, resume=True)


def test_a_kill_between_the_two_renames_keeps_the_previous_checkpoint(tmp_path):
    from metakd.checkpoint import has_checkpoint

    target = tmp_path / "ckpt"
    _distiller("none", 2).fit(EXAMPLES, checkpoint_dir=target)
    target.rename(tmp_path / ".ckpt.old")  # what a SIGKILL right after the first rename leaves
    assert has_checkpoint(target) and read_meta(target)["steps_done"] == 2
    resumed = _distiller("none", 3)
    resumed.fit(EXAMPLES, checkpoint_dir=target, resume=True)
    assert resumed.steps_done == 3


def test_an_interrupted_atomic_write_puts_the_previous_version_back(tmp_path):
    from metakd.atomic import atomic_directory

    target = tmp_path / "d"
    target.mkdir()
    (target / "f").write_text("old")
    import metakd.atomic as atomic

    real = atomic.Path.rename
    calls = []

    def rename_then_stop(self, new):
        out = real(self, new)
        calls.append(new)
        if len(calls) == 1:  # after moving the old version aside, before moving the new one in
            raise KeyboardInterrupt
        return out

    atomic.Path.rename = rename_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic_directory(target) as tmp:
                (tmp / "f").write_text("new")
    finally:
        atomic.Path.rename = real
    assert (target / "f").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_a_checkpoint_written_before_the_training_state_object_still_loads_and_resumes(tmp_path):
    """``fixtures/checkpoint_before_training_state``: written by metakd at commit 3b907a6 (before
    ``TrainingState``) by this run (LoRA, jvp, linear schedules with a warm-up step, a checkpoint
    every 3 steps) killed in step 4. Today's code loads every part of it exactly (weights, both
    optimizers, schedules, shuffle generators, counters), and resuming from it is the same run as
    resuming from the checkpoint today's code writes of that state. (Its steps are not compared with
    a fresh run: float results differ between CPUs and thread counts.)"""
    import shutil

    from safetensors.torch import load_file

    from metakd.checkpoint import save_checkpoint

    fixture = os.path.join(FIXTURES, "checkpoint_before_training_state")
    changes = dict(student_lr_schedule="linear", teacher_lr_schedule="linear", warmup_steps=1, checkpoint_every=3)
    saved, tensors = read_meta(fixture), load_file(os.path.join(fixture, "state.safetensors"))
    loaded = _distiller("lora", 7, **changes)
    loaded.state.start_schedules(7)  # as fit does before it restores them
    meta = load_checkpoint(fixture, loaded)
    state = _state(loaded)
    for name, value in tensors.items():
        head, _, rest = name.partition(".")
        if head in ("student", "teacher"):
            assert torch.equal(state[f"{head[0]}.{rest}"], value), name
        elif head.startswith("optim_"):
            assert torch.equal(state[f"o{head[6]}.{rest}"], value), name
    assert loaded.steps_done == 3 and loaded.state.fit_start["step"] == 0
    assert torch.equal(loaded.state.fit_start["train"], tensors["rng.train_shuffle"])
    assert loaded.state.student_scheduler.last_epoch == 3
    assert loaded.state.teacher_scheduler.state_dict()["last_epoch"] == saved["schedulers"]["teacher"]["last_epoch"]
    assert loaded.teacher_optimizer.param_groups[0]["lr"] == saved["optimizers"]["teacher"]["param_groups"][0]["lr"]

    save_checkpoint(tmp_path / "rewritten", loaded, meta["history"], meta["data"])
    shutil.copytree(fixture, tmp_path / "old")
    runs = []
    for directory in ("old", "rewritten"):
        d = _distiller("lora", 7, **changes)
        history = d.fit(EXAMPLES, checkpoint_dir=tmp_path / directory, resume=True)
        assert d.steps_done == 7 and len(history["train"]) == 7
        runs.append((d, history))
    _assert_same(_state(runs[0][0]), _state(runs[1][0]))
    assert [m["student_loss"] for m in runs[0][1]["train"]] == [m["student_loss"] for m in runs[1][1]["train"]]
    assert runs[0][0].teacher_optimizer.param_groups[0]["lr"] == runs[1][0].teacher_optimizer.param_groups[0]["lr"]
