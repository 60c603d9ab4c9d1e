"""`metakd bench anchored`: its cells, its refusals, the per-arm summary, and a small run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from metakd.bench import anchored
from metakd.recipes import RECIPES


def test_cells_expand_a_recipe_under_the_cells_own_values():
    cells = anchored.parse_cells("recipe=lgtm,teacher_ce_weight=0.3; teacher_anchor_weight=10; quiz_loss=margin")
    assert cells[0] == {**RECIPES["lgtm"], "recipe": "lgtm", "teacher_ce_weight": 0.3}
    assert cells[1] == {"teacher_anchor_weight": 10} and cells[2] == {"quiz_loss": "margin"}


@pytest.mark.parametrize("text,match", [("recipe=nope", "unknown recipe"), ("teacher_anchor_weight", "not key=value"),
                                        (" ; ", "no cell")])
def test_bad_cells_are_refused(text, match):
    with pytest.raises(anchored.sweep.ConfigError, match=match):
        anchored.parse_cells(text)


def test_the_grid_seed_must_not_be_a_compared_seed(capsys):
    with pytest.raises(SystemExit):
        anchored.parse(["--seeds", "0,1", "--grid-seed", "1"])
    assert "--grid-seed 1 is among --seeds" in capsys.readouterr().err
    assert anchored.parse([]).seed_list == [1, 2, 3, 4, 5]


def _run(kind: str, seed: int, last: float, best: float, trips: int = 0) -> dict:
    curve = [{"step": 3, "accuracy": best, "teacher_entropy": 0.5}]
    return {"kind": kind, "seed": seed, "student": {"accuracy": last},
            "best_validation": {"step": 3, "eval": {"accuracy": best}, "validation": {"accuracy": best}},
            "teacher_before": {"accuracy": 0.8}, "teacher_after": {"accuracy": 0.79}, "eval_curve": curve,
            "teacher_guard": {"trip_count": trips}, "median_step_seconds": 0.1}


def test_arm_summary_pairs_every_arm_with_plain_kd_by_seed():
    results = [_run("none", s, 0.70 + s / 100, 0.71 + s / 100) for s in (1, 2, 3)]
    results += [_run("anchored", s, 0.72 + s / 100, 0.72 + s / 100 + (0.01 if s == 2 else 0), trips=s - 1)
                for s in (1, 2, 3)]
    summary = {e["arm"]: e for e in anchored.arm_summary(results, [1, 2, 3])}
    assert "delta_best" not in summary["none"]
    d = summary["anchored"]["delta_best"]
    assert d["n"] == 3 and d["mean"] == pytest.approx((0.01 + 0.02 + 0.01) / 3)
    assert summary["anchored"]["delta_last"]["mean"] == pytest.approx(0.02)
    assert summary["anchored"]["guard_trips"] == [0, 1, 2]
    assert "anchored LoRA meta-KD" in anchored.main_table(list(summary.values()))


@pytest.mark.slow
def test_one_seed_end_to_end(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "anchored", "--quick", "--seeds", "1",
                           "--cells", "teacher_anchor_weight=1,temperature=4", "--jobs", "2", "--threads", "1",
                           "--no-progress", "--set", "finetune.disjoint=true", "--set", "data_seed=0",
                           "--name", "a", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for bar in ("Loading weights", "Writing model shards"):  # the workers' Hugging Face bars are off too
        assert bar not in proc.stderr + proc.stdout
    payload = json.loads((out / "a.json").read_text())
    assert payload["grid_seed"] == 0 and payload["seeds"] == [1]
    assert [r["seed"] for r in payload["grid"]] == [0] and payload["chosen"]["teacher_anchor_weight"] == 1
    kinds = sorted((r["kind"], r["seed"]) for r in payload["results"])
    assert kinds == [("anchored", 1), ("frozen", 1), ("none", 1), ("quiz_only", 1)]
    quiz_only = next(r for r in payload["results"] if r["kind"] == "quiz_only")
    assert quiz_only["values"]["teacher_guard"] is False and quiz_only["teacher_guard"] is None
    anchored_run = next(r for r in payload["results"] if r["kind"] == "anchored")
    assert anchored_run["teacher_guard"]["enabled"] and anchored_run["teacher_guard"]["start_accuracy"] is not None
    frozen = next(r for r in payload["results"] if r["kind"] == "frozen")
    assert frozen["teacher_before"]["accuracy"] == pytest.approx(anchored_run["teacher_after"]["accuracy"])
    # the control distils with the anchored arm's loss (the cell's temperature), plain KD with the base one
    assert frozen["temperature"] == anchored_run["temperature"] == 4.0
    assert next(r for r in payload["results"] if r["kind"] == "none")["temperature"] == 2.0
    md = (out / "a.md").read_text()
    assert "not among the compared seeds" in md and "teacher_anchor_weight=1" in md
    n = payload["teacher"]["n_train"]  # what the teacher trained on, counted, not the finetune.n_train setting
    assert isinstance(n, int) and f"on {n} training examples outside the distillation's n_train pool" in md
