"""`metakd bench student-lora-vs-full`: the rank flags, the variants, the notes, and --quick end to end."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from metakd.bench import student_lora_vs_full as slvf
from metakd.config import ConfigError


def _args(ranks=None, quick=False, alpha_ratio=2.0):
    return argparse.Namespace(ranks=ranks, quick=quick, alpha_ratio=alpha_ratio)


def test_parse_ranks_sorts_and_rejects_bad_values():
    assert slvf.parse_ranks("32, 2,8") == [2, 8, 32]
    for bad in ("", "0,8", "-2", "2,2", "2.5", "eight", ","):
        with pytest.raises(ConfigError, match="--ranks"):
            slvf.parse_ranks(bad)


def test_variants_full_student_then_one_per_rank_with_constant_alpha_ratio():
    default = slvf.variants(_args(), None, {})
    assert [v.values["rank"] for v in default] == [None, *slvf.RANKS]
    assert [v.values["rank"] for v in slvf.variants(_args(quick=True), None, {})] == [None, *slvf.QUICK_RANKS]
    full, *lora = slvf.variants(_args("16,4", alpha_ratio=0.5), None, {})
    assert full.label == slvf.FULL and full.overrides == {"distill.student_lora": False}
    assert [v.label for v in lora] == ["LoRA r=4", "LoRA r=16"]
    for v in lora:
        r = v.values["rank"]
        assert v.overrides == {"distill.student_lora": True, "distill.student_lora_r": r,
                               "distill.student_lora_alpha": r // 2}
    with pytest.raises(ConfigError, match="--alpha-ratio"):
        slvf.variants(_args("1,8", alpha_ratio=0.5), None, {})  # alpha 0.5 at r=1
    with pytest.raises(ConfigError, match="--alpha-ratio"):
        slvf.variants(_args("8", alpha_ratio=-1.0), None, {})


def _entry(label, rank, params, accuracy, step, memory, seconds):
    stat = lambda x: {"mean": x, "std": 0.0}  # noqa: E731
    return {"label": label, "values": {"lora": rank is not None, "rank": rank}, "seeds": [0],
            "trainable_student_params": params, "accuracy": stat(accuracy), "median_step_seconds": stat(step),
            "peak_memory_bytes": stat(memory), "train_seconds": stat(seconds)}


def test_notes_are_computed_from_the_summary(tmp_path):
    summary = [_entry(slvf.FULL, None, 1000, 0.80, 1.0, 400.0, 100.0), _entry("LoRA r=4", 4, 10, 0.70, 0.5, 300.0, 50.0),
               _entry("LoRA r=16", 16, 40, 0.75, 0.6, 200.0, 60.0)]
    notes = "\n".join(slvf.notes_for(summary, "classification", 2.0, width=8))
    assert "best LoRA rank by accuracy: r=16 (0.7500); full student 0.8000" in notes
    # r=4 and r=16 are equally far from 8 in log2: the smaller one is the reference
    assert "LoRA r=4 vs full student: accuracy -0.1000" in notes
    assert "train time x0.50" in notes and "s/step x0.50" in notes and "peak memory x0.75" in notes
    assert "1% of full" in notes
    assert "ranks 16 exceed the student's width 8" in notes
    slvf.plot(summary, "classification", tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_cli_rejects_bad_ranks():
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "student-lora-vs-full", "--quick",
                           "--ranks", "8,0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "metakd: error:" in proc.stderr and "--ranks" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bench_student_lora_vs_full_quick_end_to_end(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "student-lora-vs-full", "--quick", "--steps", "4",
                           "--no-progress", "--out", str(out)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"| {slvf.FULL} |" in proc.stdout and "| LoRA r=8 |" in proc.stdout
    for ext in ("json", "md", "png"):
        assert (out / f"student_lora_vs_full.{ext}").stat().st_size > 0
    assert (out / "student_lora_vs_full.png").stat().st_size > 1000
    summary = json.loads((out / "student_lora_vs_full.json").read_text())["summary"]
    full = [e for e in summary if not e["values"]["lora"]]
    lora = [e for e in summary if e["values"]["lora"]]
    assert len(full) == 1 and [e["values"]["rank"] for e in lora] == list(slvf.QUICK_RANKS)
    params = [e["trainable_student_params"] for e in lora]
    assert all(0 < a < b for a, b in zip(params, params[1:]))
    assert params[-1] < full[0]["trainable_student_params"]
    assert full[0]["trainable_student_params"] == full[0]["student_params"]
