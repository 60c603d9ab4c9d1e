"""`metakd bench kd-vs-meta`: its pure summaries (curve mean/std across seeds, the comparison
with plain KD, the notes), its flags, and the --quick run end to end."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metakd.bench import kd_vs_meta as kvm
from metakd.bench import sweep

SETTINGS = settings(max_examples=60, deadline=None)
scores = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
stats = st.fixed_dictionaries({"mean": scores, "std": st.floats(min_value=0.0, max_value=1e2)})


# ---------------------------------------------------------------------------- flags
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    sweep.add_arguments(p)
    kvm._args(p)
    return p


def test_parse_modes_canonical_order_and_errors():
    assert kvm.parse_modes("full,none") == ["none", "full"]
    assert kvm.parse_modes(" lora ") == ["lora"]
    for bad in ("", "lora,lora", "lora,bogus", ","):
        with pytest.raises(argparse.ArgumentTypeError):
            kvm.parse_modes(bad)


@pytest.mark.parametrize("text", ["0", "-3", "two", "1.5"])
def test_positive_int_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        kvm.positive_int(text)


@SETTINGS
@given(st.integers(1, 5000))
def test_default_eval_every_gives_a_handful_of_points(steps):
    every = kvm.default_eval_every(steps)
    assert every >= 1
    # the distiller scores every `every` steps before the last, and then the last
    points = len(range(every, steps, every)) + 1
    assert points <= max(steps, 1)
    if steps >= kvm.CURVE_POINTS:
        assert kvm.CURVE_POINTS <= points <= 2 * kvm.CURVE_POINTS


@pytest.mark.parametrize("argv,seeds,steps", [
    ([], "0,1,2", kvm.FULL_STEPS),
    (["--quick"], "0", kvm.QUICK_STEPS),
    (["--quick", "--seeds", "3,4", "--steps", "5"], "3,4", 5),  # the user's flags win
    (["--config", "run.yaml"], "0,1,2", None),  # the run file says how long
    (["--set", "distill.max_steps=7"], "0,1,2", None),
    (["--set", "distill.epochs=2"], "0,1,2", None),
])
def test_with_defaults(argv, seeds, steps):
    args = _parser().parse_args(kvm.with_defaults(argv))
    assert (args.seeds, args.steps) == (seeds, steps)
    assert args.modes == list(kvm.MODES) and args.eval_every is None


# ---------------------------------------------------------------------------- curves
@st.composite
def seed_curves(draw):
    """1-4 curves over the same increasing steps (as every seed of a mode has)."""
    steps = sorted(draw(st.sets(st.integers(1, 500), min_size=1, max_size=8)))
    n = draw(st.integers(1, 4))
    return [[(s, draw(scores)) for s in steps] for _ in range(n)]


@SETTINGS
@given(seed_curves(), st.randoms())
def test_curve_stats_mean_std_per_step(curves, rnd):
    out = kvm.curve_stats(curves)
    assert [p["step"] for p in out] == [s for s, _ in curves[0]]
    for i, p in enumerate(out):
        values = [c[i][1] for c in curves]
        assert p["n"] == len(curves)
        assert min(values) - 1e-9 <= p["mean"] <= max(values) + 1e-9
        assert p["mean"] == pytest.approx(statistics.fmean(values), abs=1e-9)
        assert p["std"] >= 0
        assert p["std"] == (pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-9) if len(values) > 1 else 0.0)
    shuffled = list(curves)
    rnd.shuffle(shuffled)  # the order of the seeds does not matter
    for a, b in zip(out, kvm.curve_stats(shuffled)):
        assert a["step"] == b["step"] and a["n"] == b["n"]
        assert b["mean"] == pytest.approx(a["mean"], abs=1e-9) and b["std"] == pytest.approx(a["std"], abs=1e-9)


@SETTINGS
@given(seed_curves(), scores)
def test_curve_stats_constant_shift_keeps_std(curves, shift):
    out = kvm.curve_stats(curves)
    moved = kvm.curve_stats([[(s, v + shift) for s, v in c] for c in curves])
    for a, b in zip(out, moved):
        assert b["mean"] == pytest.approx(a["mean"] + shift, abs=1e-6)
        assert b["std"] == pytest.approx(a["std"], abs=1e-6)


def test_curve_stats_keeps_the_steps_all_seeds_share():
    out = kvm.curve_stats([[(2, 0.5), (4, 0.6), (5, 0.7)], [(2, 0.7), (5, 0.9)]])
    assert [p["step"] for p in out] == [2, 5]
    assert out[0]["mean"] == pytest.approx(0.6) and out[0]["std"] == pytest.approx(math.sqrt(0.02))
    assert kvm.curve_stats([]) == []


def test_curve_reads_the_eval_history():
    result = {"eval_curve": [{"step": 2, "accuracy": 0.5, "loss": 1.0}, {"step": 4, "loss": 0.9},
                             {"step": 6, "accuracy": 0.75, "loss": 0.8}]}
    assert kvm.curve(result, "accuracy") == [(2, 0.5), (6, 0.75)]


# ---------------------------------------------------------------------------- comparison and notes
@SETTINGS
@given(stats, stats)
def test_compare_is_antisymmetric_and_in_pooled_std_units(a, b):
    ab, ba = kvm.compare(a, b), kvm.compare(b, a)
    assert ab["diff"] == pytest.approx(b["mean"] - a["mean"]) and ba["diff"] == pytest.approx(-ab["diff"])
    assert ab["pooled_std"] == ba["pooled_std"] >= 0
    if ab["pooled_std"] == 0:
        assert ab["std_units"] is None and ab["within"] is None
    else:
        assert ab["std_units"] == pytest.approx(ab["diff"] / ab["pooled_std"])
        assert ba["std_units"] == pytest.approx(-ab["std_units"])
        assert ab["within"] == ba["within"] == (abs(ab["diff"]) <= ab["pooled_std"])


def test_compare_examples():
    c = kvm.compare({"mean": 0.80, "std": 0.01}, {"mean": 0.85, "std": 0.01})
    assert c["std_units"] == pytest.approx(5.0) and c["within"] is False
    c = kvm.compare({"mean": 0.80, "std": 0.03}, {"mean": 0.81, "std": 0.04})
    assert c["pooled_std"] == pytest.approx(math.sqrt((0.03 ** 2 + 0.04 ** 2) / 2)) and c["within"] is True


def _entry(mode, acc, step_s, mem, params, seeds=(0, 1, 2)):
    return {"mode": mode, "label": kvm.MODE_LABELS[mode], "seeds": list(seeds), "trainable_teacher_params": params,
            "accuracy": {"mean": acc[0], "std": acc[1]}, "perplexity": {"mean": acc[0], "std": acc[1]},
            "median_step_seconds": {"mean": step_s, "std": 0.0}, "peak_memory_bytes": {"mean": mem, "std": 0.0}}


def test_notes_follow_the_measured_summary():
    summary = [_entry("none", (0.80, 0.01), 1.0, 100.0, 0), _entry("lora", (0.805, 0.01), 3.0, 150.0, 10),
               _entry("full", (0.90, 0.01), 4.0, 200.0, 1000)]
    notes, figures = kvm.notes_for(summary, "classification")
    lora, full = (next(n for n in notes if n.startswith(kvm.MODE_LABELS[m])) for m in ("lora", "full"))
    assert "+0.0050 accuracy (better)" in lora and "+0.50 pooled seed std" in lora and "within the seed spread" in lora
    assert "+0.1000 accuracy (better)" in full and "+10.00 pooled seed std" in full and "beyond" in full
    cost = figures["cost_ratios"]
    assert cost["lora/full_step_seconds"] == pytest.approx(0.75) and cost["lora/full_peak_memory"] == 0.75
    assert cost["lora/full_trainable_teacher_params"] == 0.01
    assert cost["lora/none_step_seconds"] == 3.0 and cost["full/none_peak_memory"] == 2.0
    assert any("0.75x" in n and "0.0100x" in n for n in notes)


def test_notes_perplexity_lower_is_better_and_one_seed_has_no_spread():
    summary = [_entry("none", (20.0, 0.0), 1.0, 1.0, 0, seeds=[0]), _entry("full", (18.0, 0.0), 3.0, 2.0, 5, seeds=[0])]
    notes, figures = kvm.notes_for(summary, "causal_lm")
    assert "-2.00 perplexity (better)" in notes[0] and "no seed spread" in notes[0]
    assert figures["comparisons"]["full"]["within"] is None
    assert "lora/full_step_seconds" not in figures["cost_ratios"]


def test_notes_without_plain_kd_compare_nothing():
    summary = [_entry("lora", (0.8, 0.01), 3.0, 1.0, 10), _entry("full", (0.8, 0.01), 4.0, 2.0, 20)]
    notes, figures = kvm.notes_for(summary, "classification")
    assert figures["comparisons"] == {} and len(notes) == 1 and notes[0].startswith("LoRA / full")


def test_enrich_adds_curves_and_teacher_scores():
    def result(seed, accs, teacher_after):
        return {"label": "full meta-KD", "seed": seed, "values": {"mode": "full"},
                "eval_curve": [{"step": 3 * (i + 1), "accuracy": a} for i, a in enumerate(accs)],
                "teacher_before": {"accuracy": 0.9}, "teacher_after": {"accuracy": teacher_after}}
    results = [result(0, [0.5, 0.7], 0.88), result(1, [0.7, 0.9], 0.86)]
    summary = [{"label": "full meta-KD", "values": {"mode": "full"}, "seeds": [0, 1]}]
    entry = kvm.enrich(summary, results, "classification")[0]
    assert entry["mode"] == "full" and entry["curve"]["key"] == "accuracy"
    assert entry["curve"]["per_seed"] == {"0": [[3, 0.5], [6, 0.7]], "1": [[3, 0.7], [6, 0.9]]}
    assert [p["mean"] for p in entry["curve"]["mean_std"]] == pytest.approx([0.6, 0.8])
    assert entry["teacher_before_accuracy"] == {"mean": 0.9, "std": 0.0}
    assert entry["teacher_after_accuracy"]["mean"] == pytest.approx(0.87)


# ---------------------------------------------------------------------------- the command
def _bench(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "metakd", "bench", "kd-vs-meta", *argv],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv,flag", [
    (["--modes", "lora,bogus"], "--modes"),
    (["--modes", ""], "--modes"),
    (["--eval-every", "0"], "--eval-every"),
    (["--eval-every", "x"], "--eval-every"),
    (["--quick", "--eval-every", "50"], "--eval-every 50 must be below"),  # more than the run's steps
])
def test_bad_flags_exit_2(argv, flag):
    proc = _bench(*argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert flag in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quick_end_to_end(tmp_path):
    out = tmp_path / "results"
    proc = _bench("--quick", "--threads", "1", "--no-progress", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in kvm.MODE_LABELS.values():
        assert f"| {label} |" in proc.stdout
    assert "trainable teacher params" in proc.stdout and "Per seed" in proc.stdout
    assert (out / "kd_vs_meta.md").read_text().count("|") > 20
    assert (out / "kd_vs_meta.png").stat().st_size > 1000
    payload = json.loads((out / "kd_vs_meta.json").read_text())
    seeds = payload["seeds"]
    assert seeds and payload["modes"] == list(kvm.MODES)
    summary = {e["mode"]: e for e in payload["summary"]}
    assert set(summary) == set(kvm.MODES)
    for mode, e in summary.items():
        assert e["seeds"] == seeds
        assert e["accuracy"]["std"] >= 0 and set(e["curve"]["per_seed"]) == {str(s) for s in seeds}
    assert summary["none"]["trainable_teacher_params"] == 0
    assert 0 < summary["lora"]["trainable_teacher_params"] < summary["full"]["trainable_teacher_params"]
    for r in payload["results"]:
        steps = [p["step"] for p in r["eval_curve"]]
        assert len(steps) >= 2 and steps == sorted(set(steps)) and steps[-1] == r["steps"]
        assert r["values"]["meta_update"] == r["values"]["mode"]
        assert "accuracy" in r["teacher_before"] and "accuracy" in r["teacher_after"]
        curve = payload["curves"][r["values"]["mode"]]["per_seed"][str(r["seed"])]
        assert [s for s, _ in curve] == steps
    for mode, c in payload["curves"].items():
        assert [p["step"] for p in c["mean_std"]] == [p["step"] for p in payload["results"][0]["eval_curve"]]
    assert set(payload["cost_ratios"]) >= {"lora/full_step_seconds", "lora/full_peak_memory"}
