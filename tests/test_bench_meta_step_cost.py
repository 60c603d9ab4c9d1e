"""metakd bench meta-step-cost: its flags, the paired ratios and the target verdicts (no model runs)."""

from __future__ import annotations

import pytest

from metakd.bench.meta_step_cost import configurations, main, parse_args, summarize, targets


@pytest.mark.parametrize("args,flag", [(["--rounds", "6"], "--rounds"), (["--teacher-layers", "top:0"], "--teacher-layers"),
                                       (["--teacher-layers", "all,all"], "--teacher-layers"),
                                       (["--meta-batch-size", "64"], "--meta-batch-size")])
def test_bad_flags_are_usage_errors(args, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def _step(seconds: float, peak: int, before: int) -> dict:
    return {"seconds": seconds, "mem_pilot": peak, "mem_student_step": peak - 10, "rss_before": before,
            "time_pilot": seconds / 2}


def test_ratios_pair_steps_of_a_round_and_the_faster_plain_kd_is_the_denominator():
    args = parse_args(["--rounds", "4", "--meta-batch-size", "8"])
    confs = configurations(args)
    labels = [c["label"] for c in confs]
    assert labels[:2] == ["plain KD (SDPA)", "plain KD (eager)"]
    assert {"lora all reuse", "lora top:2 reuse", "full all reuse", "full top:2 reuse"} <= set(labels)
    assert "lora top:2 restore, meta_batch_size=8" in labels
    # rounds: warm-up, then a slow round (other load) that doubles every configuration's time
    sdpa = [_step(9.0, 0, 0), _step(1.4, 500, 400), _step(2.8, 500, 400)]
    eager = [_step(9.0, 0, 0), _step(1.0, 500, 400), _step(2.0, 500, 400)]
    lora_top = [_step(9.0, 0, 0), _step(1.5, 700, 400), _step(3.0, 650, 400)]
    full_all = [_step(9.0, 0, 0), _step(4.0, 1400, 400), _step(8.0, 1300, 400)]
    rows = {0: sdpa, 1: eager, labels.index("lora top:2 reuse"): lora_top, labels.index("full all reuse"): full_all}
    rows = [rows.get(i, eager) for i in range(len(confs))]
    out = summarize(confs, rows, warmup=1)
    by = {r["label"]: r for r in out}
    assert by["lora top:2 reuse"]["denominator"] == "plain KD (eager)"
    assert by["lora top:2 reuse"]["time_vs_plain"] == pytest.approx(1.5)
    assert by["lora top:2 reuse"]["peak_above_models_bytes"] == 300
    assert by["plain KD (SDPA)"]["time_vs_plain"] == pytest.approx(1.4)
    lines = targets(by, {"teacher_layers": ["all", "top:2"]})
    assert "1.50× — met" in lines[0]  # ≤ 1.8× plain KD
    assert "0.38× — met" in lines[1]  # time vs full-all, paired per round
    assert "0.30× — met" in lines[2]  # peak above the models: 300 / 1000


def test_both_sub_batch_levers_add_combined_rows_and_only_filters_them():
    confs = configurations(parse_args(["--meta-batch-size", "8", "--quiz-batch-size", "4", "--only", "quiz batch"]))
    labels = [c["label"] for c in confs]
    assert labels == ["plain KD (SDPA)", "plain KD (eager)", "lora top:2 reuse, quiz batch 4",
                      "lora top:2 restore, meta_batch_size=8, quiz batch 4",
                      "lora top:2 restore, meta_batch_size=8, quiz batch 4, meta_every=4"]
    assert confs[-1]["every"] == 4 and confs[-1]["meta_batch"] == 8 and confs[-1]["quiz_rows"] == 4
