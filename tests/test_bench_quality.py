"""`metakd bench quality`: the grid choice, the grid seed kept out of the compared seeds, its flags,
and --quick end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from metakd.bench import quality


def _grid_run(mode: str, acc: float, lr: float, loss: float | None = None) -> dict:
    val = {"accuracy": acc} if loss is None else {"accuracy": acc, "loss": loss}
    return {"mode": mode, "values": {"teacher_lr": lr}, "best_validation": {"validation": val}}


def test_choose_takes_the_best_validation_accuracy_first_on_ties():
    grid = [_grid_run("lora", 0.7, 1.0), _grid_run("lora", 0.8, 2.0), _grid_run("lora", 0.8, 3.0),
            _grid_run("full", 0.9, 4.0)]
    assert quality.choose(grid, "lora")["values"]["teacher_lr"] == 2.0
    assert quality.choose(grid, "full")["values"]["teacher_lr"] == 4.0


def test_choose_breaks_an_accuracy_tie_by_the_lower_validation_loss():
    grid = [_grid_run("lora", 0.8, 1.0, loss=0.50), _grid_run("lora", 0.8, 2.0, loss=0.40),
            _grid_run("lora", 0.7, 3.0, loss=0.10)]
    assert quality.choose(grid, "lora")["values"]["teacher_lr"] == 2.0


def test_grid_variants_cover_the_product():
    args = quality.parse(["--lora-teacher-lrs", "1e-4,1e-3", "--pilot-lrs", "0.01,0.1", "--lora-ranks", "4,16",
                          "--full-teacher-lrs", "1e-5"])
    variants = quality.grid_variants(args)
    assert sum(v["mode"] == "lora" for v in variants) == 8 and sum(v["mode"] == "full" for v in variants) == 2
    assert {"teacher_lr": 1e-3, "pilot_lr": 0.1, "lora_r": 16, "lora_alpha": 32} in [v["values"] for v in variants]



def test_per_mode_pilot_grids_override_the_shared_one():
    args = quality.parse(["--lora-teacher-lrs", "1e-3", "--full-teacher-lrs", "1e-5", "--lora-ranks", "4",
                          "--pilot-lrs", "0.5", "--lora-pilot-lrs", "0.1", "--full-pilot-lrs", "0.01,0.02"])
    variants = quality.grid_variants(args)
    assert [v["values"] for v in variants if v["mode"] == "lora"] == [
        {"teacher_lr": 1e-3, "pilot_lr": 0.1, "lora_r": 4, "lora_alpha": 8}]
    assert [v["values"]["pilot_lr"] for v in variants if v["mode"] == "full"] == [0.01, 0.02]
    shared = quality.grid_variants(quality.parse(["--pilot-lrs", "0.5", "--lora-pilot-lrs", "0.1"]))
    assert {v["values"]["pilot_lr"] for v in shared if v["mode"] == "full"} == {0.5}

def _bench(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metakd", "bench", "quality", *argv], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("argv,flag", [
    (["--pilot-lrs", "0,1"], "--pilot-lrs"),
    (["--modes", "lora,full"], "--modes must include none"),
    (["--control-modes", "lora", "--modes", "none,full"], "--control-modes lora must be among --modes"),
    (["--quick", "--set", "distill.validation_fraction=0"], "validation_fraction > 0"),
    (["--modes", "none,full", "--controls", "none", "--lora-teacher-layers", "all,top:2"], "--modes must include lora"),
    (["--seeds", "0,1", "--control-seeds", "1,2"], "--control-seeds must be among --seeds"),
    (["--control-seeds", "1,1"], "--control-seeds must list distinct integers"),
    (["--control-seeds", "x"], "--control-seeds takes comma-separated integers"),
    (["--seeds", "0,1,2", "--grid-seed", "2"], "--grid-seed 2 is among --seeds 0,1,2"),
    (["--quick", "--grid-seed", "1"], "--grid-seed 1 is among --seeds 0,1"),
])
def test_bad_flags_fail_fast_with_one_line(argv, flag):
    proc = _bench(*argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert flag in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quick_end_to_end(tmp_path):
    out = tmp_path / "results"
    proc = _bench("--quick", "--jobs", "2", "--threads", "1", "--no-progress", "--control-modes", "lora,full",
                  "--lora-teacher-layers", "all,top:1", "--name", "q", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((out / "q.json").read_text())
    assert (out / "q.png").stat().st_size > 1000 and "Grid" in (out / "q.md").read_text()
    arms = {e["arm"]: e for e in payload["summary"]}
    assert set(arms) == {"none", "lora", "full", "frozen:lora", "temperature:lora", "frozen:full", "temperature:full",
                         "layers:top:1"}
    # LoRA in the top block only: the LoRA values the grid chose, paired with LoRA on every block too
    top = [r for r in payload["results"] if r["kind"] == "layers"]
    assert len(top) == 2 and all(r["values"]["teacher_lr"] == payload["chosen"]["lora"]["teacher_lr"] for r in top)
    assert all(r["values"]["teacher_layers"] == "top:1" for r in top)
    assert "delta_lora_best" in arms["layers:top:1"] and "delta_lora_best" not in arms["lora"]
    assert "against LoRA meta-KD on every block" in (out / "q.md").read_text()
    for arm, e in arms.items():
        assert e["seeds"] == payload["seeds"] == [0, 1]
        assert (arm == "none") == ("delta_best" not in e)
    assert len(payload["grid"]) == 2 and payload["chosen"]["full"]["teacher_lr"] in (1e-4, 1e-3)
    # the grid ran on a seed of its own; no grid run is among the compared runs, each of which ran afresh
    assert payload["grid_seed"] == quality.GRID_SEED and payload["compared_seeds"] == [0, 1]
    assert all(r["seed"] == quality.GRID_SEED and r["kind"] == "grid" for r in payload["grid"])
    assert all(r["seed"] in (0, 1) and r["kind"] != "grid" for r in payload["results"])
    main = [(r["mode"], r["seed"]) for r in payload["results"] if r["kind"] == "main"]
    assert sorted(main) == sorted((m, s) for m in ("none", "lora", "full") for s in (0, 1))
    md = (out / "q.md").read_text()
    assert f"Grid (seed {quality.GRID_SEED}, not a compared seed" in md
    assert f"seeds compared: 0, 1; the grid ran on seed {quality.GRID_SEED}, not among them" in md
    for r in payload["results"]:
        assert r["best_validation"]["step"] in [p["step"] for p in r["validation_curve"]]
        assert {"teacher_accuracy", "teacher_entropy", "teacher_kl_from_initial"} <= set(r["eval_curve"][-1])
    frozen = {(r["values"]["of"], r["seed"]): r for r in payload["results"] if r["kind"] == "frozen"}
    for r in [r for r in payload["results"] if r["kind"] == "main" and r["mode"] != "none"]:
        # the frozen control distils from exactly the final meta-updated teacher (LoRA: adapters merged in)
        before = frozen[(r["mode"], r["seed"])]["teacher_before"]["accuracy"]
        assert before == pytest.approx(r["teacher_after"]["accuracy"])


def test_the_default_grid_seed_is_not_a_compared_seed():
    for argv in ([], ["--quick"]):
        args = quality.parse(argv)
        assert args.grid_seed == quality.GRID_SEED and args.grid_seed not in args.seed_list
    # no grid to run (one value of each): the grid seed is unused, so it may be among --seeds
    args = quality.parse(["--seeds", "0,1", "--grid-seed", "0", "--lora-teacher-lrs", "1e-3", "--lora-ranks", "4",
                          "--pilot-lrs", "0.01", "--full-teacher-lrs", "1e-4"])
    assert args.grid_seed == 0


def test_control_seeds_default_to_every_seed_and_keep_the_order_given():
    assert quality.parse(["--seeds", "0,1,2"]).control_seeds_list == [0, 1, 2]
    assert quality.parse(["--seeds", "0,1,2,3", "--control-seeds", "3,1"]).control_seeds_list == [3, 1]


def test_stored_runs_keep_their_key_when_a_setting_is_added_at_its_default(tmp_path):
    args = quality.parse(["--quick", "--keep-runs", str(tmp_path)])
    run = quality.base_run(args)
    spec = quality._spec(args, run, "teacher-dir", "plain KD", "main", "none", 0, {})
    older = json.loads(json.dumps(spec))
    del older["run"]["distill"]["eval_subset"]  # as written before the setting existed
    assert quality._stored(str(tmp_path), spec) == quality._stored(str(tmp_path), older)
    changed = quality._spec(args, run, "teacher-dir", "plain KD", "main", "none", 0, {"eval_subset": 10})
    assert quality._stored(str(tmp_path), changed) != quality._stored(str(tmp_path), spec)


def test_controls_take_the_main_meta_run_not_a_teacher_layers_arm():
    # a seed's teacher_layers arm of a mode may come before its main run
    main = [{"kind": "main", "mode": "none", "seed": 0}, {"kind": "layers", "mode": "lora", "seed": 0, "kept_teacher": None},
            {"kind": "main", "mode": "lora", "seed": 0, "kept_teacher": "t0"}]
    assert quality.meta_run(main, "lora", 0)["kept_teacher"] == "t0"


def _teacher(acc: float, loss: float) -> dict:
    return {"accuracy": acc, "loss": loss}


def _run(kind: str, mode: str, seed: int, teacher: dict) -> dict:
    return {"kind": kind, "mode": mode, "seed": seed, "teacher_before": teacher}


def test_same_teacher_needs_equal_accuracy_and_loss():
    a = _teacher(0.8257, 0.40086)
    assert quality.same_teacher(a, _teacher(0.8257, 0.40088))
    assert not quality.same_teacher(a, _teacher(0.8257, 0.4012)) and not quality.same_teacher(a, _teacher(0.835, 0.40086))
    assert not quality.same_teacher(a, None)


def test_teacher_groups_allow_a_teacher_per_seed_but_not_two_in_one_seed():
    a, b = _teacher(0.8257, 0.4009), _teacher(0.8349, 0.3832)
    results = [_run("main", "none", 0, a), _run("main", "lora", 0, a), _run("main", "none", 2, b),
               _run("main", "lora", 2, b), _run("frozen", "none", 2, _teacher(0.5, 0.69))]  # a control's own teacher
    groups = quality.teacher_groups(results)
    assert [(g["eval"]["accuracy"], g["seeds"]) for g in groups] == [(0.8257, [0]), (0.8349, [2])]
    with pytest.raises(quality.sweep.ConfigError, match="seed 2: its runs were distilled from different teachers"):
        quality.teacher_groups(results + [_run("main", "full", 2, a)])


def test_stored_runs_from_another_teacher_are_refused_only_where_a_seed_would_mix(tmp_path):
    args = quality.parse(["--quick", "--keep-runs", str(tmp_path)])
    run = quality.base_run(args)
    old, new = _teacher(0.8257, 0.4009), _teacher(0.8349, 0.3832)
    specs = {(mode, seed): quality._spec(args, run, "teacher-dir", mode, "main", mode, seed, {})
             for mode in ("none", "lora") for seed in (0, 1, 2)}
    for (mode, seed), teacher in [(("none", 0), old), (("lora", 0), old), (("none", 1), old), (("none", 2), new)]:
        path = quality._stored(str(tmp_path), specs[(mode, seed)])
        path.write_text(json.dumps({"teacher_before": teacher}))
    # seed 0 stored whole from the old teacher: kept; seed 1 would pair an old plain-KD run with a new LoRA run
    stale = quality.stale_stored_runs(list(specs.values()), str(tmp_path), new)
    assert stale == [quality._stored(str(tmp_path), specs[("none", 1)])]
    # a run done already (the grid's) counts for its seed
    done = [_run("main", "lora", 0, new)]
    assert len(quality.stale_stored_runs([specs[("none", 0)]], str(tmp_path), new, done=done)) == 1
    assert quality.stale_stored_runs(list(specs.values()), None, new) == []


def test_a_stored_run_is_read_back_marked_as_such_and_its_file_left_as_it_was(tmp_path, capsys):
    args = quality.parse(["--quick", "--keep-runs", str(tmp_path)])
    spec = quality._spec(args, quality.base_run(args), "teacher-dir", "plain KD", "main", "none", 0, {})
    stored = {"label": "plain KD", "seed": 0, "student": {"accuracy": 0.75}, "wall_seconds": 90.0}
    path = quality._stored(str(tmp_path), spec)
    path.write_text(json.dumps(stored))
    [result] = quality.run_all([spec], 1, "main", str(tmp_path))  # no worker starts: the run is stored
    assert result == dict(stored, read_back=True) and json.loads(path.read_text()) == stored
    assert "plain KD, seed 0: final accuracy 0.7500 (90 s" in capsys.readouterr().err


def test_a_frozen_control_whose_final_teacher_is_gone_is_refused_unless_stored(tmp_path):
    args = quality.parse(["--quick", "--keep-runs", str(tmp_path / "keep")])
    run = quality.base_run(args)
    (tmp_path / "kept").mkdir()
    here = quality._spec(args, run, str(tmp_path / "kept"), "frozen", "frozen", "none", 0, {})
    gone = quality._spec(args, run, str(tmp_path / "gone"), "frozen", "frozen", "none", 1, {})
    quality._refuse_lost_teachers([here], args.keep_runs)
    with pytest.raises(quality.sweep.ConfigError, match=f"seed 1: {tmp_path / 'gone'}"):
        quality._refuse_lost_teachers([here, gone], args.keep_runs)
    stored = quality._stored(args.keep_runs, gone)  # the control ran before: it is read back, no teacher needed
    stored.parent.mkdir(parents=True)
    stored.write_text("{}")
    quality._refuse_lost_teachers([here, gone], args.keep_runs)
