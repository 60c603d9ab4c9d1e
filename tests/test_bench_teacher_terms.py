"""metakd bench teacher-terms: its flags, the paired ratios and verdicts, and --quick end to end."""

from __future__ import annotations

import json

import pytest

from metakd.bench import BENCHMARKS
from metakd.bench.teacher_terms import BASELINE, CONFIGURATIONS, main, summarize, verdicts


@pytest.mark.parametrize("args,flag", [(["--rounds", "0"], "--rounds"), (["--threads", "0"], "--threads"),
                                       (["--teacher-layers", "top:0"], "--teacher-layers"),
                                       (["--backend", "nope"], "--backend")])
def test_bad_flags_are_usage_errors(args, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_registered_as_a_benchmark():
    assert BENCHMARKS["teacher-terms"] == "metakd.bench.teacher_terms"


def test_ratios_pair_the_steps_of_a_round():
    # a warm-up round, then rounds whose load scales every configuration alike: the ratios stay put
    scale = [9.0, 1.0, 2.0, 1.0, 3.0]  # per round
    factor = [1.0, 1.05, 1.02, 1.2, 1.3, 1.01, 1.02]  # per configuration
    rows = [[{"seconds": s * f, "cpu_seconds": f, "time_teacher_terms": 0.001 * i} for s in scale]
            for i, f in enumerate(factor)]
    rows[4][3]["seconds"] = 1.5  # one noisy round of "all three": 1.5× instead of 1.3×
    out = summarize(rows, warmup=1)
    assert [r["label"] for r in out] == [c[0] for c in CONFIGURATIONS] and out[0]["label"] == BASELINE
    assert out[0]["ratio_median"] == 1.0 and out[1]["ratio_median"] == pytest.approx(1.05)
    assert out[1]["ratio_q1"] == pytest.approx(1.05) and out[1]["ratio_q3"] == pytest.approx(1.05)
    assert out[4]["ratio_median"] == pytest.approx(1.3) and out[4]["ratio_max"] == pytest.approx(1.5)
    assert out[4]["ratio_q1"] == pytest.approx(1.3) and out[4]["ratio_q3"] == pytest.approx(1.35)
    assert out[1]["added_seconds_median"] == pytest.approx(0.075)  # rounds of 1, 2, 1, 3 s: +0.05, 0.1, 0.05, 0.15
    assert out[2]["phases_mean_seconds"]["teacher_terms"] == pytest.approx(0.002)
    assert out[4]["cpu_ratio_median"] == pytest.approx(1.3) and out[4]["cpu_ratio_max"] == pytest.approx(1.3)
    assert out[1]["cpu_added_seconds_median"] == pytest.approx(0.05)
    lines = verdicts(out)
    assert len(lines) == len(CONFIGURATIONS) - 1 and "wall 1.050× " in lines[0] and lines[0].endswith("met")
    assert "MISSED by 1.09×" in lines[2] and "CPU 1.300×" in lines[3] and "MISSED" in lines[3]


@pytest.mark.slow
def test_quick_end_to_end(tmp_path, capsys):
    assert main(["--quick", "--rounds", "2", "--threads", "1", "--name", "tt", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "tt.json").read_text())
    assert [r["label"] for r in payload["results"]] == [c[0] for c in CONFIGURATIONS]
    assert all(len(r["ratios"]) == len(r["cpu_ratios"]) == 2 for r in payload["results"]) and payload["machine"]
    assert all(r["cpu_median_step_seconds"] > 0 for r in payload["results"])
    anchor = next(r for r in payload["results"] if "anchor" in r["label"])
    assert anchor["phases_mean_seconds"]["teacher_forward"] > 0 and anchor["phases_mean_seconds"]["teacher_terms"] > 0
    assert payload["results"][0]["phases_mean_seconds"]["teacher_terms"] == 0.0  # no terms: the phase never runs
    md = (tmp_path / "tt.md").read_text()
    assert md.startswith("# tt\n\nMachine: ") and "× quiz loss only" in md and "target + all three ≤ 1.10×" in md
