"""Data-parallel distillation (metakd.distributed): two CPU processes (gloo), each on its half of
every global batch, end with the student and teacher one process gets on the whole batches.

The two-process runs start real processes with the environment torchrun and ``accelerate launch``
set (RANK, WORLD_SIZE, MASTER_ADDR, ...); each runs this module (``python -m
tests.test_distributed OUT``) and saves its models for the test to compare.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metakd import ConfigError, DistillConfig, MetaDistiller
from metakd.distributed import Dist
from metakd.models import tiny_classifier

from .conftest import make_batch, save_tiny_teacher

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2

COMMON = dict(student_optimizer="sgd", teacher_optimizer="sgd", student_lr=0.2, teacher_lr=0.5, pilot_lr=0.5,
              batch_size=8, progress=False)
"""SGD: Adam divides by the gradient's running RMS, which turns float noise in a gradient that
is mathematically zero (BERT's attention key biases) into full-size steps in either run."""
CASES = {
    "lora_jvp": dict(meta_update="lora", meta_grad="jvp"),
    "lora_finite_diff_reuse": dict(meta_update="lora", meta_grad="finite_diff", pilot="reuse", meta_every=2),
    "none": dict(meta_update="none"),
    "full_jvp": dict(meta_update="full", meta_grad="jvp", teacher_grad_clip=None),
}
LOSSES = ("student_loss", "inner_loss", "quiz_loss", "teacher_grad_norm")


def _batches():
    """Four global batches of 8 rows (quiz batches of 8), then a short last batch of 5 rows that
    two processes cannot split evenly (each takes all of it) with a quiz batch of 6 (split 3 + 3)."""
    for i in range(4):
        yield make_batch(100 + i, batch=8), make_batch(200 + i, batch=8)
    yield make_batch(300, batch=5, pad_rows=1), make_batch(301, batch=6)


def _state(d: MetaDistiller) -> dict[str, torch.Tensor]:
    out = {f"student.{n}": p.detach().clone() for n, p in d.student_module.named_parameters()}
    out.update({f"teacher.{n}": p.detach().clone() for n, p in d.teacher.named_parameters()})
    return out


DROPOUT = 0.2
"""The dropout case: teacher and student with dropout, trained with CASES["lora_jvp"]."""


def _train(case: str, dist: Dist, dropout: float = 0.0) -> dict:
    teacher = tiny_classifier("bert", num_layers=3, hidden_size=16, seed=1, dtype=torch.float64, dropout=dropout)
    student = tiny_classifier("bert", num_layers=2, hidden_size=16, seed=2, dtype=torch.float64, dropout=dropout)
    d = MetaDistiller(teacher, student, DistillConfig(**COMMON, **CASES[case]), dist=dist)
    start = _state(d)
    rows: list[int] = []  # the rows of every student forward: what this process computed on
    d.student.register_forward_pre_hook(lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                        with_kwargs=True)
    masks: list[torch.Tensor] = []  # the student's embedding-dropout masks of the forwards with grad (not jvp's)
    d.student.bert.embeddings.dropout.register_forward_hook(
        lambda m, args, out: masks.append(out.eq(0)) if torch.is_grad_enabled() else None)
    metrics = [d.step(batch, quiz) for batch, quiz in _batches()]
    return {"start": start, "end": _state(d), "rows": sorted(set(rows)), "masks": masks,
            "metrics": [{k: m[k] for k in LOSSES if k in m} for m in metrics],
            "phi": [n for n, p in d.teacher.named_parameters() if any(p is q for q in d.phi)]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, args: list[str], cwd: Path, timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Start ``world`` processes of ``python ARGS`` with the environment torchrun sets."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return done


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Every case trained by two processes: {rank: {case: result}}."""
    out = tmp_path_factory.mktemp("dist")
    results = _spawn(WORLD, ["-m", "tests.test_distributed", str(out)], cwd=ROOT)
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank} failed:\n{r.stderr[-4000:]}"
    return {rank: torch.load(out / f"rank{rank}.pt") for rank in range(WORLD)}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_what_one_process_trains(case, two_processes):
    one = _train(case, Dist())
    changed_student = [k for k in one["end"] if k.startswith("student.")
                       and not torch.equal(one["end"][k], one["start"][k])]
    changed_teacher = [k for k in one["end"] if k.startswith("teacher.")
                       and not torch.equal(one["end"][k], one["start"][k])]
    assert changed_student, "the student did not move: the comparison would be vacuous"
    if case == "none":
        assert not changed_teacher
    else:
        assert changed_teacher, "the teacher did not move: the comparison would be vacuous"
        assert set(changed_teacher) <= {f"teacher.{n}" for n in one["phi"]}
    worst = 0.0
    assert one["rows"] == ([5, 8] if case == "none" else [5, 6, 8])
    for rank in range(WORLD):
        many = two_processes[rank][case]
        # each process computed on its half of the global batches (all of the odd 5-row batch)
        assert many["rows"] == ([4, 5] if case == "none" else [3, 4, 5]), many["rows"]
        assert many["start"].keys() == one["start"].keys()
        for key in one["start"]:
            torch.testing.assert_close(many["start"][key], one["start"][key], rtol=0, atol=0)  # same seeds
            torch.testing.assert_close(many["end"][key], one["end"][key], rtol=1e-9, atol=1e-12,
                                       msg=lambda m, key=key, rank=rank: f"rank {rank}, {key}: {m}")
            worst = max(worst, float((many["end"][key] - one["end"][key]).abs().max()))
        # every process logs the global batch's losses, the ones one process logs
        assert len(many["metrics"]) == len(one["metrics"])
        for m_many, m_one in zip(many["metrics"], one["metrics"]):
            assert m_many.keys() == m_one.keys()
            for k in m_one:
                assert m_many[k] == pytest.approx(m_one[k], rel=1e-9, abs=1e-12), (k, m_many, m_one)
    for key in one["end"]:  # the processes hold bit-identical models
        assert torch.equal(two_processes[0][case]["end"][key], two_processes[1][case]["end"][key]), key
    print(f"{case}: max |2 processes - 1 process| = {worst:.3g}")


def test_processes_draw_their_own_dropout_masks_and_hold_identical_models(two_processes):
    """With dropout each process draws its own masks (the shared seed would give row i of every
    shard the same one), while the averaged gradients keep the models bit-identical."""
    runs = [two_processes[rank]["dropout"] for rank in range(WORLD)]
    masks = [r["masks"] for r in runs]
    assert len(masks[0]) == len(masks[1]) > 0
    same_shape = [(a, b) for a, b in zip(*masks) if a.shape == b.shape]
    assert same_shape
    for a, b in same_shape:
        assert 0.05 < float(a.double().mean()) < 0.4  # dropout 0.2 acts
        assert not torch.equal(a, b), "two processes drew the same dropout mask"
    for key, start in runs[0]["start"].items():
        assert torch.equal(runs[1]["start"][key], start), key  # the shared seed: same initialisation
    moved = [k for k in runs[0]["end"] if not torch.equal(runs[0]["end"][k], runs[0]["start"][k])]
    assert any(k.startswith("student.") for k in moved) and any(k.startswith("teacher.") for k in moved)
    for key, value in runs[0]["end"].items():
        assert torch.equal(runs[1]["end"][key], value), key
    for m0, m1 in zip(runs[0]["metrics"], runs[1]["metrics"]):
        assert m0 == m1  # the averaged losses: one value for all processes


# ---------------------------------------------------------------------------- refused settings
def _distiller(world: int = WORLD, **overrides) -> MetaDistiller:
    teacher = tiny_classifier("bert", num_layers=2, hidden_size=16, seed=1, dtype=torch.float64)
    student = tiny_classifier("bert", num_layers=1, hidden_size=16, seed=2, dtype=torch.float64)
    return MetaDistiller(teacher, student, DistillConfig(**{**COMMON, **overrides}),
                         dist=Dist(rank=0, world_size=world, device=torch.device("cpu")))


@pytest.mark.parametrize("overrides", [dict(meta_update="lora", meta_grad="higher"),
                                       dict(meta_update="full", meta_grad="higher", unroll_steps=2)])
def test_higher_is_refused_across_processes(overrides):
    with pytest.raises(ConfigError, match="meta_grad='higher' cannot run over 2 processes.*'jvp'"):
        _distiller(**overrides)
    _distiller(world=1, **overrides)  # one process: fine
    _distiller(meta_update="none", meta_grad="higher")  # plain KD computes no meta-gradient


@pytest.mark.parametrize("overrides, name", [(dict(batch_size=7, meta_update="none"), "batch_size 7"),
                                             (dict(batch_size=8, quiz_batch_size=5, meta_grad="jvp"),
                                              "quiz_batch_size 5"),
                                             (dict(batch_size=9, meta_grad="jvp"), "batch_size 9"),
                                             (dict(batch_size=8, meta_batch_size=3, meta_grad="jvp"),
                                              "meta_batch_size 3")])
def test_batch_sizes_must_divide_over_the_processes(overrides, name):
    with pytest.raises(ConfigError, match=f"{name} is not divisible by the 2 processes"):
        _distiller(**overrides)
    _distiller(world=1, **overrides)


def test_higher_backend_refuses_a_reduce():
    from metakd.metagrad import MetaProblem, meta_gradient

    d = _distiller(world=1, meta_update="lora", meta_grad="higher")
    batch = make_batch(0)
    with torch.enable_grad():
        t_out = d.teacher_outputs(batch)
    problem = MetaProblem(student=d.student_module, params=d.student_params, objective=d.objective, teacher_out=t_out,
                          batch=batch, quiz_batch=make_batch(1), phi=d.phi, pilot_lr=0.1, reduce=lambda ts: ts)
    with pytest.raises(ValueError, match="higher' cannot run data-parallel"):
        meta_gradient("higher", problem)


# ---------------------------------------------------------------------------- sharding
def test_shard_takes_contiguous_equal_rows_and_keeps_short_batches_whole():
    batch = {"teacher": {"input_ids": torch.arange(12).view(6, 2)}, "student": {"input_ids": torch.arange(6)},
             "labels": torch.arange(6), "note": "kept"}
    parts = [Dist(rank=r, world_size=3).shard(batch) for r in range(3)]
    assert [p["labels"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert parts[1]["teacher"]["input_ids"].tolist() == [[4, 5], [6, 7]]
    assert parts[2]["student"]["input_ids"].tolist() == [4, 5] and parts[2]["note"] == "kept"
    short = {"input_ids": torch.arange(10).view(5, 2), "labels": torch.arange(5)}
    assert Dist(rank=1, world_size=2).shard(short) is short  # 5 rows over 2 processes: each takes all
    assert Dist().shard(batch) is batch and Dist(rank=1, world_size=2).shard(None) is None
    tensors = [torch.ones(2), torch.zeros(())]
    assert Dist().all_reduce_mean(tensors) == tensors  # one process: nothing to average


def test_one_process_needs_no_process_group(monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    dist = Dist.from_env()
    assert (dist.rank, dist.world_size, dist.device, dist.is_main) == (0, 1, None, True)
    assert not torch.distributed.is_initialized()


# ---------------------------------------------------------------------------- the real launcher
@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny random BERT classifier saved with the bundled tokenizer."""
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher"), num_heads=2)


@pytest.mark.slow
def test_accelerate_launch_distills_on_two_cpu_processes(teacher_dir, tmp_path):
    out = tmp_path / "out"
    run = tmp_path / "run.yaml"
    run.write_text(f"""
teacher: {teacher_dir}
student: "first:1"
data: embedded
n_train: 40
n_eval: 16
output: {out}
distill: {{meta_update: lora, meta_grad: jvp, max_steps: 3, batch_size: 4, max_length: 16, eval_batch_size: 16}}
""")
    env = dict(os.environ, OMP_NUM_THREADS="1", METAKD_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(WORLD),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())]
    r = subprocess.run([*launcher, "-m", "metakd", "distill", str(run), "--no-progress"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("saved to") == 1, r.stdout  # only the main process reports
    assert r.stderr.count("training and 16 evaluation examples") == 1, r.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0 <= metrics["student"]["accuracy"] <= 1
    assert (out / "distilled" / "student" / "model.safetensors").is_file()
    assert (out / "distilled" / "teacher_adapters" / "adapter_model.safetensors").is_file()
    assert not list(out.glob("**/*.tmp*")), "a second writer left a partial directory behind"


# ---------------------------------------------------------------------------- stop and resume
STOP_EXAMPLES = [{k: v[i] for k, v in make_batch(s, batch=4, length=9).items()} for s in range(10) for i in range(4)]


def _fit_worker(out: str, how: str) -> None:
    """``how``: "whole" trains 6 steps; "stop": rank 1 alone gets SIGTERM during step 2;
    "resume" continues from the checkpoint. Writes the final (or stopped) state of this rank."""
    import signal

    from metakd.checkpoint import TrainingInterrupted

    dist = Dist.from_env()
    teacher = tiny_classifier("bert", num_layers=3, hidden_size=16, seed=1, dtype=torch.float64)
    student = tiny_classifier("bert", num_layers=2, hidden_size=16, seed=2, dtype=torch.float64)
    cfg = DistillConfig(**{**COMMON, **CASES["lora_jvp"]}, max_steps=6, epochs=2, quiz_fraction=0.2)
    d = MetaDistiller(teacher, student, cfg, dist=dist)
    if how == "stop" and dist.rank == 1:
        step = d.step

        def step_then_signal(*args, **kwargs):
            result = step(*args, **kwargs)
            if d.steps_done == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return result

        d.step = step_then_signal
    checkpoint = Path(out) / "checkpoint"
    stopped = None
    try:
        d.fit(STOP_EXAMPLES, checkpoint_dir=checkpoint if how != "whole" else None, resume=how == "resume")
    except TrainingInterrupted as exc:
        stopped = {"signal": exc.signal_name, "step": exc.step}
    torch.save({"state": _state(d), "stopped": stopped, "steps": d.steps_done}, Path(out) / f"{how}{dist.rank}.pt")
    dist.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_a_signal_to_one_process_stops_all_after_the_same_step_and_they_resume(tmp_path):
    results = {}
    for how in ("whole", "stop", "resume"):
        for rank, r in enumerate(_spawn(WORLD, ["-m", "tests.test_distributed", str(tmp_path), how], cwd=ROOT)):
            assert r.returncode == 0, f"{how}, rank {rank}:\n{r.stderr[-4000:]}"
        results[how] = [torch.load(tmp_path / f"{how}{rank}.pt") for rank in range(WORLD)]
        if how == "stop":  # rank 1 got the signal; rank 0 stopped after the same step; one checkpoint
            assert [r["stopped"] for r in results["stop"]] == [{"signal": "SIGTERM", "step": 2}] * 2
            assert json.loads((tmp_path / "checkpoint" / "checkpoint.json").read_text())["steps_done"] == 2
    for rank in range(WORLD):
        assert results["resume"][rank]["steps"] == results["whole"][rank]["steps"] == 6
        for key, value in results["whole"][rank]["state"].items():
            assert torch.equal(results["resume"][rank]["state"][key], value), (rank, key)


# ---------------------------------------------------------------------------- worker
def _worker(out: str) -> None:
    dist = Dist.from_env()
    assert dist.world_size == WORLD and torch.distributed.get_backend() == "gloo", dist
    results = {case: _train(case, dist) for case in CASES}
    results["dropout"] = _train("lora_jvp", dist, dropout=DROPOUT)
    torch.save(results, Path(out) / f"rank{dist.rank}.pt")
    dist.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    if len(sys.argv) > 2:
        _fit_worker(sys.argv[1], sys.argv[2])
    else:
        _worker(sys.argv[1])
