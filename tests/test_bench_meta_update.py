"""The main job's report: time ratios paired by round and seed, configurations to interleave."""

from __future__ import annotations

import pytest

from metakd.bench.meta_update import COMPARISONS, configurations, parse_args
from metakd.bench.meta_update_report import timing_ratios


def _run(config: str, seed: int, seconds: list[float]) -> dict:
    return {"config": config, "label": config.upper(), "seed": seed, "step_seconds": seconds}


def test_timing_ratios_pair_steps_of_the_same_round_and_seed():
    # seed 0 ran under a load that came and went (rounds 2 and 4 three times slower for both
    # configurations); seed 1 ran on a machine twice as fast. Medians taken per configuration
    # over all steps would mix them; the per-round ratio is 0.5 in every round.
    results = [_run("lora", 0, [1.0, 3.0, 1.0, 3.0]), _run("full", 0, [2.0, 6.0, 2.0, 6.0]),
               _run("lora", 1, [0.5, 0.5]), _run("full", 1, [1.0, 1.0]), _run("none", 0, [0.25] * 4)]
    ratios = timing_ratios(results, [("lora", "full"), ("lora", "none"), ("full", "missing")])
    assert [(r["numerator"], r["denominator"]) for r in ratios] == [("lora", "full"), ("lora", "none")]
    lf, ln = ratios
    assert lf["label"] == "LORA / FULL"
    assert (lf["median"], lf["min"], lf["max"], lf["rounds"]) == (0.5, 0.5, 0.5, 6)
    assert ln["rounds"] == 4 and (ln["min"], ln["median"], ln["max"]) == (4.0, 8.0, 12.0)


def test_timing_ratios_drop_unpaired_rounds():
    ratios = timing_ratios([_run("lora", 0, [1.0, 2.0, 9.0]), _run("full", 0, [2.0, 4.0])], [("lora", "full")])
    assert ratios[0]["rounds"] == 2 and ratios[0]["max"] == pytest.approx(0.5)


def test_configurations_follow_the_modes_and_comparisons_name_them():
    configs = configurations(parse_args(["--modes", "lora,none"]))
    assert [(c.key, c.distill) for c in configs] == [("lora", {"meta_update": "lora"}),
                                                     ("none", {"meta_update": "none"})]
    keys = {c.key for c in configurations(parse_args([]))}
    assert all(a in keys and b in keys for a, b in COMPARISONS)


def test_data_auto_takes_the_projects_sst2_when_it_is_there(tmp_path, monkeypatch):
    from metakd.bench import meta_update

    monkeypatch.setattr(meta_update, "SHARED_SST2", tmp_path / "sst2")
    data, note = meta_update.resolve_data("auto", quick=False)
    assert data == "embedded" and "not there" in note and "glue/sst2" in note
    (tmp_path / "sst2").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "sst2" / name).write_text("sentence\tlabel\nfine film \t1\n")
    assert meta_update.resolve_data("auto", quick=False) == (str(tmp_path / "sst2"), f"--data auto: SST-2 from {tmp_path / 'sst2'}")
    assert meta_update.resolve_data("auto", quick=True) == ("embedded", None)
    assert meta_update.resolve_data("glue/sst2", quick=False) == ("glue/sst2", None)
    assert parse_args(["--data", str(tmp_path / "x.tsv")]).data == str(tmp_path / "x.tsv")
