"""The sweep harness and the temperature / feature-layers benchmarks built on it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from metakd.bench import feature_layers, sweep, temperature
from metakd.config import ConfigError


def _args(**kw):
    p = argparse.ArgumentParser()
    sweep.add_arguments(p)
    args = p.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    sweep.parse_common(p, args)
    return args


# ---------------------------------------------------------------------------- pure pieces
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20))
def test_mean_std_matches_the_definition(values):
    stat = sweep.mean_std(values)
    mean = sum(values) / len(values)
    assert stat["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-6)
    if len(values) == 1:
        assert stat["std"] == 0.0
    else:
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        assert stat["std"] == pytest.approx(var ** 0.5, rel=1e-6, abs=1e-6)


@given(st.integers(1, 200))
def test_teacher_depths_are_ordered_and_in_range(n):
    shallow, middle, deep = (feature_layers.teacher_layer(d, n) for d in ("shallow", "middle", "deep"))
    assert 1 <= shallow <= middle <= deep == n


def test_base_run_takes_set_and_steps_and_rejects_bad_keys():
    run = sweep.base_run(_args(quick=True, overrides=["distill.meta_update=lora", "n_train=64"], steps=3))
    assert run.distill.meta_update == "lora" and run.n_train == 64 and run.distill.max_steps == 3
    with pytest.raises(ConfigError, match="temprature"):
        sweep.base_run(_args(quick=True, overrides=["distill.temprature=3"]))
    with pytest.raises(ConfigError, match="not found"):
        sweep.base_run(_args(config="/nonexistent/run.yaml"))


def test_with_overrides_sets_nested_keys_and_validates():
    run = sweep.base_run(_args(quick=True))
    changed = sweep.with_overrides(run, {"distill.temperature": 5.0, "student": "first:1"})
    assert changed.distill.temperature == 5.0 and changed.student == "first:1"
    assert run.distill.temperature == 2.0  # the base is left alone
    with pytest.raises(ConfigError, match="temperature"):
        sweep.with_overrides(run, {"distill.temperature": -1.0})


def test_bad_flag_values_are_usage_errors():
    p = argparse.ArgumentParser()
    sweep.add_arguments(p)
    for argv in (["--seeds", "0,x"], ["--seeds", "1,1"], ["--steps", "0"], ["--threads", "0"]):
        args = p.parse_args(argv)
        with pytest.raises(SystemExit):
            sweep.parse_common(p, args)


@pytest.mark.parametrize("flag", ["0", "1,1", "a", "-2"])
def test_temperature_variants_reject_bad_values(flag):
    with pytest.raises(ConfigError, match="--temperatures"):
        temperature.variants(argparse.Namespace(temperatures=flag), None, {})


def test_feature_variants_map_the_last_student_layer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 6}))
    args = argparse.Namespace(depths="none,shallow,middle,deep", feature_weight=0.5)
    vs = feature_layers.variants(args, None, {"teacher_dir": str(tmp_path)})
    assert [v.overrides["distill.feature_layers"] for v in vs] == [None, {-1: 2}, {-1: 3}, {-1: 6}]
    assert vs[0].overrides["distill.feature_weight"] == 0.0 and vs[1].overrides["distill.feature_weight"] == 0.5
    with pytest.raises(ConfigError, match="--depths"):
        feature_layers.variants(argparse.Namespace(depths="deep,bogus", feature_weight=1.0), None, {})
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="blocks"):
        feature_layers.teacher_blocks(str(tmp_path))


def _fake(label, seed, acc, secs):
    train = {"seconds": secs * 10, "peak_memory_bytes": 100, "energy_joules": 1.0, "energy_estimated": True,
             "energy_source": "estimated", "memory_source": "peak RSS"}
    return {"label": label, "values": {"x": label}, "seed": seed, "student": {"accuracy": acc, "loss": 0.5},
            "teacher_after": {"accuracy": 0.9}, "train": train, "median_step_seconds": secs,
            "trainable_teacher_params": 0, "student_params": 10}


def test_summarize_groups_by_variant_in_order():
    results = [_fake("b", 0, 0.6, 1.0), _fake("a", 0, 0.8, 2.0), _fake("b", 1, 0.8, 3.0)]
    summary = sweep.summarize(results)
    assert [e["label"] for e in summary] == ["b", "a"]
    assert summary[0]["seeds"] == [0, 1]
    assert summary[0]["accuracy"]["mean"] == pytest.approx(0.7)
    assert summary[0]["median_step_seconds"]["mean"] == pytest.approx(2.0)
    assert summary[1]["accuracy"]["std"] == 0.0
    assert "tokens_per_second" not in summary[0]  # missing figures are left out, not invented
    assert sweep.provenance(results)["energy_joules"].startswith("estimated")


# ---------------------------------------------------------------------------- end to end
def _bench(name, out, *extra):
    return subprocess.run([sys.executable, "-m", "metakd", "bench", name, "--no-progress", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_temperature_quick_end_to_end(tmp_path):
    proc = _bench("temperature", tmp_path, "--quick", "--temperatures", "1,4", "--steps", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "temperature.json").read_text())
    assert [e["values"]["temperature"] for e in payload["summary"]] == [1.0, 4.0]
    for e in payload["summary"]:
        assert 0.0 <= e["accuracy"]["mean"] <= 1.0 and e["loss"]["mean"] > 0
        assert e["tokens_per_second"]["mean"] > 0 and e["peak_memory_bytes"]["mean"] > 0
    for r in payload["results"]:
        assert r["steps"] == 4 and r["eval_curve"][-1]["step"] == 4
    assert payload["machine"]["torch"] and payload["seeds"] == [0]
    assert set(payload["measured"]) >= {"energy_joules", "peak_memory_bytes", "tokens_per_second"}
    assert (tmp_path / "temperature.png").stat().st_size > 0
    md = (tmp_path / "temperature.md").read_text()
    assert "| T | accuracy |" in md and "Machine:" in md


@pytest.mark.slow
def test_feature_layers_quick_end_to_end(tmp_path):
    proc = _bench("feature-layers", tmp_path, "--quick", "--depths", "none,deep", "--steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "feature_layers.json").read_text())
    assert [e["values"]["depth"] for e in payload["summary"]] == ["none", "deep"]
    deep = payload["results"][1]
    assert deep["values"]["teacher_layer"] == deep["values"]["teacher_blocks"] == 4
    assert "deep (teacher layer 4/4)" in proc.stdout


@pytest.mark.slow
def test_sweep_runs_a_causal_lm_recipe(tmp_path, shared_data):
    """The same script on an LM run file: perplexity and generation speed instead of accuracy."""
    run_file = tmp_path / "lm.yaml"
    run_file.write_text(f"""
task: causal_lm
teacher: "new:gpt2"
teacher_config: {{tokenizer_vocab: 512, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 64}}
student: "first:1"
data: {shared_data / "tinyshakespeare"}
n_train: 48
n_eval: 8
generation_tokens: 4
finetune: {{epochs: 1, lr: 1.0e-3, batch_size: 16}}
distill: {{task: causal_lm, meta_update: none, batch_size: 8, max_length: 32, max_steps: 3}}
""")
    proc = _bench("temperature", tmp_path / "out", "--config", str(run_file), "--temperatures", "1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((tmp_path / "out" / "temperature.json").read_text())
    for e in payload["summary"]:
        assert e["perplexity"]["mean"] > 1 and e["generation_tokens_per_second"]["mean"] > 0
    assert "| T | perplexity |" in proc.stdout


def test_bad_data_fails_before_any_work(tmp_path):
    proc = _bench("temperature", tmp_path, "--quick", "--set", "data=/nonexistent/data.tsv")
    assert proc.returncode == 2
    assert "metakd: error:" in proc.stderr and "/nonexistent/data.tsv" in proc.stderr
    assert not (tmp_path / "temperature.json").exists()
