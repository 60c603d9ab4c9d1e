"""The compression pipeline end to end: Python API and `metakd compress`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from metakd.compress import load_compressed
from metakd.compress.config import CompressConfig
from metakd.compress.pipeline import compress, stage_table
from metakd.config import ConfigError
from metakd.run import RunConfig
from tests.conftest import save_tiny_teacher


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny random BERT classifier (4 heads, so there is something to prune structurally)."""
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def _run(teacher_dir, out, **compress) -> RunConfig:
    return RunConfig.from_dict(dict(
        teacher=str(teacher_dir), student="first:2", data="embedded", n_train=64, n_eval=32, output=str(out),
        distill=dict(meta_update="lora", max_steps=2, batch_size=8, max_length=16, progress=False, eval_batch_size=16),
        compress=compress))


def test_magnitude_recovery_minmax_pipeline(teacher_dir, tmp_path):
    run = _run(teacher_dir, tmp_path / "out", prune="magnitude", sparsity=0.5, recovery_steps=2, quantize="minmax",
               bits=4)
    report = compress(run, progress=False)
    stages = {r["stage"]: r for r in report["stages"]}
    assert list(stages) == ["distilled", "pruned", "recovered", "quantized"]
    assert stages["pruned"]["linear_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert stages["recovered"]["linear_sparsity"] >= 0.5  # recovery did not revive pruned weights
    assert stages["recovered"]["recovery_steps"] == 2
    sizes = [stages[s]["bytes_on_disk"] for s in ("distilled", "pruned", "quantized")]
    assert sizes[0] > sizes[1] > sizes[2]
    for row in stages.values():
        assert 0 <= row["eval"]["accuracy"] <= 1 and row["eval"]["tokens_per_second"] > 0
    # the saved final model evaluates to the numbers the pipeline measured
    assert report["reloaded"]["max_abs_difference"] < 1e-6
    assert (tmp_path / "out" / "distilled" / "student" / "config.json").is_file()  # distilled first
    assert json.loads((tmp_path / "out" / "compression.json").read_text())["stages"][-1]["stage"] == "quantized"
    columns, rows = stage_table(report)
    assert len(rows) == 4 and "accuracy" in columns


def test_structured_int8_pipeline_reuses_the_distilled_student(teacher_dir, tmp_path):
    out = tmp_path / "out"
    run = _run(teacher_dir, out, prune="structured", heads=0.5, neurons=0.5, quantize="dynamic_int8")
    first = compress(run, progress=False)
    student = out / "distilled" / "student" / "model.safetensors"
    stamp = student.stat().st_mtime_ns
    stages = {r["stage"]: r for r in first["stages"]}
    assert stages["pruned"]["params"] < stages["distilled"]["params"]
    after = stages["pruned"]["prune"]["after"]
    assert all(b["heads"] == 2 and b["neurons"] == 32 for b in after.values())
    assert first["reloaded"]["max_abs_difference"] < 1e-6
    model = load_compressed(stages["quantized"]["saved"])
    assert model.metakd_compression["method"] == "dynamic_int8"
    compress(run, progress=False)  # a second run compresses the saved student again
    assert student.stat().st_mtime_ns == stamp


def test_bitsandbytes_pipeline(tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is the 'quant' extra")
    wide = save_tiny_teacher(tmp_path / "teacher", hidden_size=64)  # one 4-bit block (64) per row
    run = _run(wide, tmp_path / "out", prune="magnitude", sparsity=0.5, quantize="bnb4")
    report = compress(run, progress=False)
    stages = {r["stage"]: r for r in report["stages"]}
    assert stages["quantized"]["quantize"]["full_precision_layers"] == {}  # every block Linear is 4-bit
    assert stages["quantized"]["params"] == stages["distilled"]["params"]
    assert stages["quantized"]["nonzero_params"] is None  # hidden in the packed codes
    assert stages["quantized"]["bytes_on_disk"] < stages["distilled"]["bytes_on_disk"]
    assert report["reloaded"]["max_abs_difference"] < 1e-6
    assert "n/a" in stage_table(report)[1][-1]


def test_bad_compress_sections_fail_before_any_work(teacher_dir, tmp_path):
    with pytest.raises(ConfigError, match="nothing to do"):
        compress(_run(teacher_dir, tmp_path / "a"), progress=False)
    with pytest.raises(ConfigError, match="recovery"):
        compress(_run(teacher_dir, tmp_path / "b", recovery_steps=3, quantize="minmax"), progress=False)
    with pytest.raises(ConfigError, match="bitsandbytes"):
        compress(_run(teacher_dir, tmp_path / "c", prune="structured", heads=0.5, quantize="bnb8"), progress=False)
    assert not any((tmp_path / d).exists() for d in "abc")
    with pytest.raises(ConfigError, match="did you mean 'sparsity'"):
        CompressConfig.from_dict({"sparsty": 0.5})
    with pytest.raises(ConfigError, match="compress settings go under 'compress:'"):
        RunConfig.from_dict({"sparsity": 0.5})
    for bad, match in [({"bits": 1}, "bits"), ({"bits": 4.0}, "bits"), ({"granularity": "row"}, "granularity"),
                       ({"prune": "structured"}, "removes nothing"), ({"heads": 1.0}, "heads"),
                       ({"recovery_steps": -1}, "recovery_steps")]:
        with pytest.raises(ConfigError, match=match):
            CompressConfig.from_dict(bad)


@pytest.mark.slow
def test_compress_command_end_to_end(teacher_dir, tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(f"""
teacher: {teacher_dir}
student: "first:2"
data: embedded
n_train: 64
n_eval: 32
output: {tmp_path / "out"}
distill: {{meta_update: none, max_steps: 2, batch_size: 8, max_length: 16, progress: false}}
compress: {{prune: magnitude, sparsity: 0.3, quantize: minmax, bits: 8}}
""")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "metakd", "compress", str(run), "--no-progress",
                           "--set", "compress.granularity=tensor"], capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| distilled |" in done.stdout and "| quantized |" in done.stdout and "reloaded quantized" in done.stdout
    report = json.loads((tmp_path / "out" / "compression.json").read_text())
    assert report["compress"]["granularity"] == "tensor"
    bad = subprocess.run([sys.executable, "-m", "metakd", "compress", str(run), "--set", "compress.bits=12"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "compress.bits must be" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_causal_lm_pipeline_reports_perplexity_and_generation_speed(tmp_path):
    from metakd.run import finetune_teacher

    words = ("the film was good", "a bad plot", "what a fine hotel", "the soup was cold", "never again")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(words[(i + j) % len(words)] for j in range(6)) + "." for i in range(60)))
    run = RunConfig.from_dict(dict(
        task="causal_lm", teacher="new:gpt2", student="layers:0,1", data=str(corpus), n_eval=4, generation_tokens=4,
        teacher_config=dict(tokenizer_vocab=300, n_layer=2, n_embd=32, n_head=4, n_positions=64),
        finetune=dict(epochs=1, lr=1e-3, batch_size=4, max_steps=4), output=str(tmp_path / "out"),
        distill=dict(meta_update="none", max_steps=2, batch_size=4, max_length=32, progress=False),
        compress=dict(prune="structured", heads=0.5, neurons=0.25, recovery_steps=2, quantize="dynamic_int8")))
    finetune_teacher(run, progress=False)
    report = compress(run, progress=False)
    stages = {r["stage"]: r for r in report["stages"]}
    assert list(stages) == ["distilled", "pruned", "recovered", "quantized"]
    for row in stages.values():
        assert row["eval"]["perplexity"] > 1 and row["generation"]["generation_tokens_per_second"] > 0
    assert stages["pruned"]["params"] < stages["distilled"]["params"]
    assert report["reloaded"]["max_abs_difference"] < 1e-6
    columns, _ = stage_table(report)
    assert "perplexity" in columns
