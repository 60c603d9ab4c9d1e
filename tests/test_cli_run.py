"""`metakd finetune-teacher` and `metakd distill` end to end through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

WORDS = ("the film was good", "a bad plot and worse acting", "what a fine hotel", "the soup was cold",
         "i loved every minute", "never again", "bright and warm", "dull and grey")


def _metakd(*args, tmp_path, timeout=900):
    env = dict(os.environ, METAKD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "metakd", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
def test_causal_lm_run_from_scratch_end_to_end(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(6)) + "."
                                  for i in range(80)))
    run = tmp_path / "lm.yaml"
    run.write_text(f"""
task: causal_lm
teacher: "new:gpt2"
teacher_config: {{tokenizer_vocab: 320, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 64}}
student: "layers:0"
data: {corpus}
n_eval: 4
finetune: {{epochs: 1, lr: 1.0e-3, batch_size: 4, max_steps: 6}}
generation_tokens: 4
output: {tmp_path / "out"}
distill: {{meta_update: lora, meta_grad: jvp, max_steps: 3, batch_size: 4, max_length: 32, lm_chunk_size: 16,
          progress: false}}
""")
    ft = _metakd("finetune-teacher", str(run), "--no-progress", tmp_path=tmp_path)
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert "teacher saved to" in ft.stdout and "perplexity" in ft.stdout
    teacher_dir = tmp_path / "out" / "teacher"
    assert (teacher_dir / "model.safetensors").is_file() and (teacher_dir / "tokenizer.json").is_file()

    ds = _metakd("distill", str(run), "--no-progress", tmp_path=tmp_path)
    assert ds.returncode == 0, ds.stderr[-3000:]
    assert "perplexity" in ds.stdout and "tokens/s" in ds.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["student"]["perplexity"] > 1
    assert metrics["student_generation"]["generation_tokens_per_second"] > 0
    assert metrics["trainable_teacher_params"] > 0
    distilled = tmp_path / "out" / "distilled"
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(str(distilled / "student"))
    assert student.config.n_layer == 1
    assert (distilled / "teacher_adapters" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_classification_run_with_string_labels_end_to_end(tmp_path):
    data = tmp_path / "reviews.csv"
    rows = ["text,label"] + [f"{w} {i},{'pos' if k % 2 == 0 else 'neg'}" for i in range(6)
                             for k, w in enumerate(WORDS)]
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "cls.yaml"
    run.write_text(f"""
teacher: embedded
student: "first:1"
data: {data}
finetune: {{epochs: 1, max_steps: 2, batch_size: 8}}
output: {tmp_path / "out"}
distill: {{meta_update: lora, max_steps: 2, batch_size: 8, max_length: 16, progress: false}}
""")
    ds = _metakd("distill", str(run), "--no-progress", "--set", "distill.meta_update=full",
                 "--set", "distill.precision=bf16", "--set", "distill.report_to=tensorboard", tmp_path=tmp_path)
    assert ds.returncode == 0, ds.stderr[-3000:]
    # the embedded encoder has no trained head: distill fine-tunes it first and saves it for reuse
    assert "classification head is untrained" in ds.stderr
    assert (tmp_path / "out" / "teacher" / "model.safetensors").is_file()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["run"]["distill"]["meta_update"] == "full"
    assert metrics["label_names"] == ["neg", "pos"]
    assert 0.0 <= metrics["student"]["accuracy"] <= 1.0
    assert (tmp_path / "out" / "distilled" / "teacher" / "model.safetensors").is_file()
    assert metrics["run"]["distill"]["precision"] == "bf16"
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [0, 1] and all(line["teacher_grad_norm"] > 0 for line in log)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "out" / "tensorboard").iterdir())


def test_bad_run_file_fails_without_traceback(tmp_path):
    run = tmp_path / "bad.yaml"
    run.write_text("teacher: embedded\ndistill:\n  temprature: 2\n")
    proc = _metakd("distill", str(run), tmp_path=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "did you mean 'temperature'" in proc.stderr and "Traceback" not in proc.stderr


def test_new_teacher_needs_finetune_first(tmp_path):
    run = tmp_path / "lm.yaml"
    run.write_text(f"task: causal_lm\nteacher: new:gpt2\ndata: {tmp_path / 'a.txt'}\noutput: {tmp_path / 'o'}\n")
    proc = _metakd("distill", str(run), tmp_path=tmp_path, timeout=120)
    assert proc.returncode == 2 and "finetune-teacher" in proc.stderr, proc.stderr[-2000:]
