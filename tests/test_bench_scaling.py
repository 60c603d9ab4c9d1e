"""The scaling benchmark: its pure functions (power-law fit, crossing interpolation, parameter counts,
memory prediction) and `metakd bench scaling --quick` end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from metakd.bench.scaling import (LADDER, crossing, describe_crossing, fit_power_law, llama_param_counts,
                                  predict_memory)

sizes = st.lists(st.floats(1e3, 1e10, allow_nan=False), min_size=2, max_size=8, unique=True).filter(
    lambda xs: max(xs) / min(xs) > 1.01)


# ---------------------------------------------------------------------------- fit_power_law
@settings(max_examples=60, deadline=None)
@given(xs=sizes, exponent=st.floats(-3, 3), coefficient=st.floats(1e-6, 1e6))
def test_power_law_gives_back_its_exponent(xs, exponent, coefficient):
    fit = fit_power_law(xs, [coefficient * x ** exponent for x in xs])
    assert fit is not None and fit["points"] == len(xs)
    assert fit["exponent"] == pytest.approx(exponent, abs=1e-6)
    assert fit["coefficient"] == pytest.approx(coefficient, rel=1e-4)


@settings(max_examples=60, deadline=None)
@given(xs=sizes, ys=st.lists(st.floats(1e-3, 1e3), min_size=8, max_size=8), scale=st.floats(1e-3, 1e3),
       power=st.floats(-2, 2))
def test_power_law_exponent_ignores_units_and_adds_under_products(xs, ys, scale, power):
    ys = ys[: len(xs)]
    base = fit_power_law(xs, ys)["exponent"]
    assert fit_power_law(xs, [scale * y for y in ys])["exponent"] == pytest.approx(base, abs=1e-6)
    assert fit_power_law(xs, [y * x ** power for x, y in zip(xs, ys)])["exponent"] == pytest.approx(base + power,
                                                                                                  abs=1e-6)


def test_power_law_needs_two_distinct_positive_points():
    assert fit_power_law([10.0], [1.0]) is None
    assert fit_power_law([10.0, 10.0], [1.0, 2.0]) is None
    assert fit_power_law([10.0, 20.0], [1.0, 0.0]) is None  # no logarithm of zero (e.g. plain KD's 0 optimizer bytes)
    assert fit_power_law([], []) is None


# ---------------------------------------------------------------------------- crossing
def test_crossing_interpolates_in_log_log():
    # ratio halves per decade: 0.8 at 1e6, 0.4 at 1e7 -> 0.5 at 10^(6 + log(0.625)/log(0.5))
    c = crossing([1e6, 1e7, 1e8], [0.8, 0.4, 0.2])
    assert c["status"] == "interpolated" and c["between"] == [1e6, 1e7]
    assert math.log10(c["x"]) == pytest.approx(6 + math.log(0.5 / 0.8) / math.log(0.5))
    assert "between" in describe_crossing(c)


def test_crossing_edge_cases():
    assert crossing([1e6, 1e7], [0.4, 0.3])["status"] == "at_first"
    assert crossing([1e6, 1e7], [0.5, 0.3]) == {"status": "at_first", "x": 1e6, "threshold": 0.5}
    c = crossing([1e6, 1e7], [0.9, 0.6])
    assert c == {"status": "not_reached", "x": 1e7, "threshold": 0.5}
    assert describe_crossing(c).startswith("not reached up to 10M")
    assert describe_crossing(crossing([1e6], [0.2])).startswith("at or below the smallest size measured (1M")
    assert crossing([], [])["status"] == "no_data"
    # unsorted input; the first drop counts even if the ratio rises again later
    c = crossing([1e8, 1e6, 1e7], [0.7, 0.9, 0.3])
    assert c["status"] == "interpolated" and c["between"] == [1e6, 1e7]


@settings(max_examples=80, deadline=None)
@given(xs=sizes, ratios=st.lists(st.floats(0.01, 1.0), min_size=8, max_size=8), threshold=st.floats(0.05, 0.95))
def test_crossing_lies_where_the_ratio_first_drops(xs, ratios, threshold):
    pts = sorted(zip(xs, ratios[: len(xs)]))
    assume(all(abs(r - threshold) > 1e-9 for _, r in pts))
    c = crossing([x for x, _ in pts], [r for _, r in pts], threshold)
    first = next((i for i, (_, r) in enumerate(pts) if r <= threshold), None)
    if first is None:
        assert c["status"] == "not_reached" and c["x"] == pts[-1][0]
    elif first == 0:
        assert c["status"] == "at_first" and c["x"] == pts[0][0]
    else:
        (x0, r0), (x1, r1) = pts[first - 1], pts[first]
        assert c["status"] == "interpolated" and c["between"] == [x0, x1]
        assert x0 * (1 - 1e-9) <= c["x"] <= x1 * (1 + 1e-9)
        # the log-log line through the two neighbours passes through (x, threshold)
        slope = (math.log(r1) - math.log(r0)) / (math.log(x1) - math.log(x0))
        assert math.log(r0) + slope * (math.log(c["x"]) - math.log(x0)) == pytest.approx(math.log(threshold),
                                                                                          abs=1e-7)


# ---------------------------------------------------------------------------- counts and prediction
@pytest.mark.parametrize("shape", [LADDER["tiny-h32"], LADDER["tiny-h128"], (48, 3, 6, 2, 80)])
def test_param_counts_match_the_built_models(shape):
    from metakd.bench.scaling import build_teacher, two_block_student
    from metakd.models import attach_lora, count_parameters, meta_parameters

    counts = llama_param_counts(shape, vocab=256)
    teacher = build_teacher(shape, vocab=256, seq_len=16, seed=0)
    blocks = len(teacher.model.layers)
    assert counts["teacher"] == sum(p.numel() for p in teacher.parameters())
    assert counts["teacher_linear"] == sum(m.weight.numel() for m in teacher.model.layers.modules()
                                           if m.__class__.__name__ == "Linear")
    student = two_block_student(teacher)
    assert len(teacher.model.layers) == blocks and len(student.model.layers) == 2  # the teacher is left whole
    assert counts["student"] == sum(p.numel() for p in student.parameters())
    lora = attach_lora(teacher, 8, 16, 0.0, ["q_proj", "v_proj"])
    assert counts["lora"] == count_parameters(meta_parameters(lora, "lora"))


def test_memory_prediction_orders_the_modes():
    counts = llama_param_counts(LADDER["smollm-360m"], vocab=8192)
    pred = {m: predict_memory(counts, m, tokens=256, seq_len=64, vocab=8192, base_bytes=500 * 2**20)
            for m in ("none", "lora", "full", "lora-nf4")}
    assert pred["none"]["bytes"] < pred["lora"]["bytes"] < pred["full"]["bytes"]
    assert pred["full"]["parts"]["phi_states"] == 12 * counts["teacher"]  # fp32 grads + two AdamW moments
    assert pred["lora-nf4"]["parts"]["teacher_weights"] < pred["lora"]["parts"]["teacher_weights"] / 3
    on_gpu = predict_memory(counts, "full", tokens=256, seq_len=64, vocab=8192, base_bytes=0, cuda=True)
    assert on_gpu["parts"]["phi_states"] == 16 * counts["teacher"]  # + AdamW's foreach temporaries


# ---------------------------------------------------------------------------- the command
def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "metakd", "bench", "scaling", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("args,flag", [(["--sizes", "tiny-h32,huge"], "--sizes"), (["--modes", "lora,bogus"], "--modes"),
                                        (["--steps", "0"], "--steps"), (["--threads", "0"], "--threads"),
                                        (["--sizes", "tiny-h32,tiny-h32"], "--sizes"), (["--seq-len", "1"], "--seq-len"),
                                        (["--render", "/nonexistent/scaling.json"], "--render"),
                                        (["--teacher-layers", "top:0"], "--teacher-layers"),
                                        (["--teacher-layers", "all,bottom:2"], "--teacher-layers"),
                                        (["--teacher-layers", "all,all"], "--teacher-layers"),
                                        (["--meta-batch-size", "0"], "--meta-batch-size"),
                                        (["--batch-size", "4", "--meta-batch-size", "5"], "--meta-batch-size")])
def test_bad_flags_are_usage_errors(args, flag, capsys):
    from metakd.bench.scaling import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_teacher_layers_run_keys():
    from metakd.bench.scaling import mode_label, predict_memory, split_mode

    assert split_mode("lora@top:2") == ("lora", "top:2") and split_mode("full") == ("full", "all")
    assert mode_label("lora@top:2") == "LoRA meta, teacher_layers=top:2" and mode_label("none") == "plain KD"
    counts = llama_param_counts((64, 2, 4, 4, 128), 1024)
    assert (predict_memory(counts, "full@top:1", 128, 32, 1024, 0)
            == predict_memory(counts, "full", 128, 32, 1024, 0))  # all blocks learning: an upper bound


def test_bad_flag_through_the_cli_names_it_without_a_traceback():
    proc = _run("--modes", "lora,bogus", timeout=120)
    assert proc.returncode == 2 and "--modes takes a subset of none,lora,full,lora-nf4" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quick_end_to_end_and_render(tmp_path):
    out = tmp_path / "results"
    proc = _run("--quick", "--no-progress", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[1/8] tiny-h32 none" in proc.stderr
    for label in ("plain KD", "LoRA meta", "full meta", "LoRA meta, NF4 teacher"):
        assert f"| {label} |" in proc.stdout
    payload = json.loads((out / "scaling.json").read_text())
    for key in ("machine", "versions", "seed", "settings", "measured", "growth", "crossings", "results"):
        assert key in payload
    assert payload["measured"]["predicted_peak_bytes"] == "predicted"
    assert payload["measured"]["energy_joules_per_step"] in ("estimated", "measured")
    results = payload["results"]
    assert {(r["size"], r["mode"]) for r in results} == {(s, m) for s in ("tiny-h32", "tiny-h128")
                                                         for m in ("none", "lora", "full", "lora-nf4")}
    for r in results:
        assert r["status"] in ("ok", "skipped", "error") and r["predicted_peak_bytes"] > 0
        if r["status"] == "ok":
            assert r["median_step_seconds"] > 0 and len(r["step_seconds"]) == 2
            assert r["peak_memory_bytes"] > 0 and r["peak_above_models_bytes"] is not None
            assert isinstance(r["energy_estimated"], bool)
    ok = {(r["size"], r["mode"]): r for r in results if r["status"] == "ok"}
    for size in ("tiny-h32", "tiny-h128"):
        none, lora, full = ok[(size, "none")], ok[(size, "lora")], ok[(size, "full")]
        assert none["trainable_teacher_params"] == 0 and none["grad_optimizer_bytes"] == 0
        assert 0 < lora["trainable_teacher_params"] < full["trainable_teacher_params"] == full["teacher_params"]
        # fp32 grads + AdamW's two moments (+ its step counters)
        assert 12 * full["teacher_params"] <= full["grad_optimizer_bytes"] < 12.1 * full["teacher_params"]
    assert "lora" in payload["crossings"] and "peak_memory_bytes" in payload["crossings"]["lora"]
    assert payload["growth"]["full"]["median_step_seconds"]["points"] == 2
    assert (out / "scaling.md").read_text().count("|") > 20
    assert (out / "scaling.png").stat().st_size > 1000

    again = tmp_path / "again"
    proc = _run("--render", str(out / "scaling.json"), "--out", str(again), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (again / "scaling.md").read_text() == (out / "scaling.md").read_text()
