"""The main job through its public path: `metakd bench meta-update --quick`, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_meta_update_quick_end_to_end(tmp_path):
    env = dict(os.environ, METAKD_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "meta-update", "--quick", "--steps", "4",
                           "--no-progress", "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for mode in ("plain KD", "LoRA meta-update", "full meta-update"):
        assert f"| {mode} |" in proc.stdout
    assert "trainable teacher params" in proc.stdout
    payload = json.loads((out / "meta_update.json").read_text())
    results = {r["mode"]: r for r in payload["results"]}
    assert set(results) == {"none", "lora", "full"}
    assert results["none"]["trainable_teacher_params"] == 0
    assert 0 < results["lora"]["trainable_teacher_params"] < results["full"]["trainable_teacher_params"]
    for r in results.values():
        assert r["steps"] == 4 and len(r["step_seconds"]) == 4
        assert r["median_step_seconds"] > 0
        assert r["train"]["peak_memory_bytes"] > 0
        assert 0.0 <= r["student"]["accuracy"] <= 1.0
    # plain KD leaves the teacher as it was
    assert results["none"]["teacher_before"]["accuracy"] == results["none"]["teacher_after"]["accuracy"]
    # per phase: time, CPU time, peak memory and energy of every phase, each figure labelled
    meta_phases = {"teacher_forward", "pilot", "quiz", "directional_derivative", "teacher_backward", "teacher_step",
                   "student_step"}
    assert set(results["none"]["phases"]) == {"teacher_forward", "student_step"}
    assert set(results["lora"]["phases"]) == set(results["full"]["phases"]) == meta_phases
    for r in results.values():
        for stats in r["phases"].values():
            assert stats["steps"] == 4
            assert stats["total_seconds"] >= 0 and stats["mean_seconds_per_step"] >= 0
            assert stats["cpu_seconds"] >= 0 and stats["energy_joules_per_step"] >= 0
            assert stats["peak_memory_bytes"] is None or stats["peak_memory_bytes"] > 0
        assert r["phase_energy_source"] and r["phase_memory_source"]
        assert isinstance(r["phase_energy_estimated"], bool)
    for entry in payload["summary"]:
        assert set(entry["phases"]) == set(results[entry["mode"]]["phases"])
        assert all(set(st) == {"seconds_per_step", "cpu_seconds_per_step", "peak_memory_bytes",
                               "energy_joules_per_step"} for st in entry["phases"].values())
    measured = payload["measured"]
    assert set(measured["phases"]) == {"seconds_per_step", "cpu_seconds_per_step", "peak_memory_bytes",
                                       "energy_joules_per_step"}
    assert measured["phases"]["energy_joules_per_step"] is not any(r["phase_energy_estimated"] for r in results.values())
    assert measured["energy_joules"] is not any(r["train"]["energy_estimated"] for r in results.values())
    assert "phases.energy_joules_per_step" in payload["sources"]
    assert "| LoRA meta-update | directional_derivative |" in proc.stdout
    # the modes took their steps in turn; time ratios are medians of per-round ratios, with their spread
    assert "expected time left" in proc.stderr and "an estimate" in proc.stderr
    ratios = {(r["numerator"], r["denominator"]): r for r in payload["time_ratios"]}
    assert set(ratios) == {("lora", "full"), ("lora", "none"), ("full", "none")}
    for r in ratios.values():
        assert r["rounds"] == 4 and 0 < r["min"] <= r["q1"] <= r["median"] <= r["q3"] <= r["max"]
    assert "| LoRA meta-update / full meta-update |" in proc.stdout and "IQR" in proc.stdout
    # how far each student got: start, end, and the distance to the teacher in points
    assert "student − teacher (points)" in proc.stdout and "chance" in proc.stdout
    for e in payload["summary"]:
        run = results[e["mode"]]
        assert e["points_vs_teacher"]["mean"] == pytest.approx(
            100 * (run["student"]["accuracy"] - run["teacher_before"]["accuracy"]))
        assert 0.0 <= run["student_before"]["accuracy"] <= 1.0
    assert "per meta-gradient phase" in proc.stdout
    assert payload["machine"]["logical_cores"] >= 1
    assert (out / "meta_update.md").read_text().count("|") > 10
    assert "Per phase" in (out / "meta_update.md").read_text()
    assert (out / "meta_update.png").stat().st_size > 1000


def test_cli_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "meta-update", "--modes", "lora,bogus"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--modes" in proc.stderr


def test_cli_reports_missing_data_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "meta-update", "--quick",
                           "--data", str(tmp_path / "nope.tsv")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "metakd: error:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bench_meta_grad_quick_end_to_end(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "meta-grad", "--quick", "--depths", "1",
                           "--backends", "higher,jvp", "--modes", "lora", "--pilots", "reuse", "--steps", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Time by phase" in proc.stdout and "Meta-step every k steps" in proc.stdout
    payload = json.loads((out / "meta_grad_backends.json").read_text())
    results = payload["results"]
    plain = [r for r in results if r["mode"] == "none"]
    meta = [r for r in results if r["mode"] == "lora"]
    assert len(plain) == 1 and plain[0]["phases_median_seconds"]["pilot"] == 0.0
    # the grid (higher, jvp), then meta_every 2 and 4 and a checkpointed-teacher run of the best backend
    assert sorted((r["backend"], r["meta_every"], r["checkpointing"]) for r in meta) == [
        ("higher", 1, False), ("jvp", 1, False), ("jvp", 1, True), ("jvp", 2, False), ("jvp", 4, False)]
    for r in meta:
        assert r["pilot"] == "reuse" and r["median_step_seconds"] > 0 and r["peak_memory_bytes"] > 0
        assert r["time_vs_plain"] > 0
        if r["meta_every"] == 1:
            assert all(r["phases_median_seconds"][p] > 0 for p in ("teacher_forward", "pilot", "quiz",
                                                                  "directional_derivative", "teacher_backward"))
    jvp = next(r for r in meta if r["backend"] == "jvp" and r["meta_every"] == 1 and not r["checkpointing"])
    assert jvp["rel_error_vs_higher"] < 1e-4  # same tiny teacher and batches in both processes
    assert jvp["first_batch"]["grad_norm"] > 0
    assert any("plain KD" in t for t in payload["targets"])
    assert (out / "meta_grad_backends.md").read_text().count("|") > 20
    assert (out / "meta_grad_backends.png").stat().st_size > 1000
    # --render rebuilds the same report from the JSON without measuring anything
    again = tmp_path / "again"
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "meta-grad", "--render",
                           str(out / "meta_grad_backends.json"), "--out", str(again)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (again / "meta_grad_backends.md").read_text() == (out / "meta_grad_backends.md").read_text()


def test_bench_meta_grad_rejects_unknown_backend():
    proc = subprocess.run([sys.executable, "-m", "metakd", "bench", "meta-grad", "--backends", "higher,magic"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--backends" in proc.stderr
