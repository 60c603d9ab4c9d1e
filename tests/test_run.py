"""Run files (RunConfig): every shipped config parses, overrides, and bad values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from metakd.config import ConfigError
from metakd.run import RunConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"sst2_minilm.yaml", "openwebtext_lm.yaml", "llama3_8b_to_3.2_1b_sst2.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_parse(path):
    run = RunConfig.from_yaml(path)
    assert run.distill.task == run.task
    assert run.output


def test_llama_recipe_has_the_published_settings():
    run = RunConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "llama3_8b_to_3.2_1b_sst2.yaml")
    d = run.distill
    assert (run.teacher_bits, run.teacher_quant_type, d.meta_update) == (4, "nf4", "lora")
    assert (d.student_lora, d.student_lora_r, d.student_lora_alpha) == (True, 4, 8)
    assert (d.temperature, d.alpha, d.student_lr, d.weight_decay, d.batch_size, d.max_length, d.epochs) == (
        2.0, 0.5, 5e-5, 0.01, 16, 128, 1)


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_overrides_reach_nested_and_top_level_keys(tmp_path):
    path = _write(tmp_path, "teacher: embedded\ndata: embedded\ndistill:\n  meta_update: lora\n")
    run = RunConfig.from_yaml(path, ["distill.meta_update=full", "n_train=100", "distill.student_lr=1e-3",
                                     "student=layers:0,5"])
    assert (run.distill.meta_update, run.n_train, run.distill.student_lr, run.student) == ("full", 100, 1e-3,
                                                                                           "layers:0,5")


@pytest.mark.parametrize("text,match", [
    ("teachr: embedded\n", "did you mean 'teacher'"),
    ("temperature: 2\n", "go under 'distill:'"),
    ("task: regression\n", "task must be one of"),
    ("teacher_bits: 3\n", "teacher_bits must be 4, 8"),
    ("teacher: x\nteacher_bits: 4\ndistill:\n  meta_update: full\n", "cannot train a quantized teacher"),
    ("task: causal_lm\n", "embedded teacher is a sentence encoder"),
    ("n_train: 0\n", "n_train must be a positive integer"),
    ("finetune:\n  epoch: 2\n", "unknown finetune key"),
    ("distill:\n  meta_update: sideways\n", "meta_update must be one of"),
    ("distill: 3\n", "'distill' must be a mapping"),
])
def test_bad_run_files_fail_clearly(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_yaml(_write(tmp_path, text))


def test_bad_override_and_missing_file(tmp_path):
    path = _write(tmp_path, "data: embedded\n")
    with pytest.raises(ConfigError, match="key=value"):
        RunConfig.from_yaml(path, ["distill.meta_update"])
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.from_yaml(tmp_path / "missing.yaml")


def test_task_propagates_to_distill_config(tmp_path):
    run = RunConfig.from_yaml(_write(tmp_path, "task: causal_lm\nteacher: new:gpt2\n"))
    assert run.distill.task == "causal_lm"
