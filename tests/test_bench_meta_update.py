"""The main job's report: time ratios paired by round and seed, configurations to interleave."""

from __future__ import annotations

from pathlib import Path

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


def _no_hub_call(*args, **kwargs):
    raise AssertionError("offline: the hub must not be asked")


@pytest.fixture
def online(monkeypatch):
    """The hub is reachable (a monkeypatched hub call, never the network); no offline variable set."""
    from metakd.bench import meta_update

    for name in meta_update.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    calls = []

    def status(repo_id, repo_type="model", timeout=10.0):
        calls.append((repo_id, repo_type, timeout))
        return "reachable", ""

    monkeypatch.setattr(meta_update, "hub_status", status)
    return calls


def test_data_auto_takes_sst2_from_the_hub_when_it_is_reachable(online):
    from metakd.bench import meta_update

    data, note = meta_update.resolve_data("auto", quick=False)
    assert data == "glue/sst2" and "SST-2" in note and "reachable" in note
    assert online == [("nyu-mll/glue", "dataset", meta_update.REACH_TIMEOUT)] and meta_update.REACH_TIMEOUT <= 5
    assert meta_update.AUTO_HUB_REPO == __import__("metakd.data", fromlist=["HUB_TASKS"]).HUB_TASKS["glue/sst2"].path


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_data_auto_offline_takes_the_easy_embedded_mix_without_asking_the_hub(monkeypatch, variable):
    from metakd.bench import meta_update

    for name in meta_update.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(meta_update, "hub_status", _no_hub_call)
    data, note = meta_update.resolve_data("auto", quick=False)
    assert data == "embedded:easy" and variable in note and "embedded" in note and "--data PATH" in note


@pytest.mark.parametrize("status,says", [("unreachable", "unreachable"), ("missing", "has no nyu-mll/glue"),
                                         ("offline", "switched off")])
def test_data_auto_falls_back_to_the_embedded_mix_when_the_hub_cannot_serve(monkeypatch, status, says):
    from metakd.bench import meta_update

    for name in meta_update.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(meta_update, "hub_status", lambda *a, **k: (status, "ConnectError: no route"))
    data, note = meta_update.resolve_data("auto", quick=False)
    assert data == "embedded:easy" and says in note and "ConnectError" in note


def test_data_auto_never_looks_outside_the_checkout(monkeypatch, tmp_path):
    # a copy of SST-2 beside the checkout (as ../shared/data/sst2 is on the project's machines) is
    # not taken: offline, auto means the embedded task; a local copy is named with --data PATH
    from metakd.bench import meta_update

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(meta_update, "hub_status", _no_hub_call)
    monkeypatch.setattr(Path, "is_dir", lambda self: (_ for _ in ()).throw(AssertionError(f"looked at {self}")))
    monkeypatch.setattr(Path, "is_file", lambda self: (_ for _ in ()).throw(AssertionError(f"looked at {self}")))
    assert meta_update.resolve_data("auto", quick=False)[0] == "embedded:easy"
    assert not hasattr(meta_update, "SHARED_SST2")


def test_data_other_than_auto_is_taken_as_given_and_quick_takes_the_embedded_task(monkeypatch, tmp_path):
    from metakd.bench import meta_update

    monkeypatch.setattr(meta_update, "hub_status", _no_hub_call)
    assert meta_update.resolve_data("auto", quick=True)[0] == "embedded"
    assert meta_update.resolve_data("glue/sst2", quick=False) == ("glue/sst2", None)
    assert meta_update.resolve_data("embedded", quick=False) == ("embedded", None)
    assert parse_args(["--data", str(tmp_path / "x.tsv")]).data == str(tmp_path / "x.tsv")
    assert parse_args([]).data == "auto"  # resolved when the run starts, not while parsing


class _Split:
    """Just enough of a datasets.Dataset for data.tasks._load_hub_task."""

    def __init__(self, rows):
        self.rows, self.column_names, self.features = rows, ["sentence", "label"], {}

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, column):
        return [r[column] for r in self.rows]


def test_the_online_path_loads_glue_sst2_through_the_hub_loader_and_says_so_first(online, monkeypatch, capsys):
    from metakd.bench import meta_update
    from metakd.data import tasks

    rows = [{"sentence": f"{w} film {i}", "label": int(w == "good")} for i in range(10) for w in ("good", "bad")]
    loaded = []

    def hub_load(name, path, config, **kwargs):
        loaded.append((name, path, config))
        dev = [{"sentence": f"{w} show {i}", "label": int(w == "good")} for i in range(3) for w in ("good", "bad")]
        return {"train": _Split(rows), "validation": _Split(dev)}

    monkeypatch.setattr(tasks, "_hub_load", hub_load)
    args = parse_args(["--no-progress"])
    splits = meta_update.load_data(args)
    assert loaded == [("glue/sst2", "nyu-mll/glue", "sst2")] and args.data == "glue/sst2"
    assert len(splits["train"]) == 20 and len(splits["eval"]) == 6
    assert capsys.readouterr().err.splitlines()[0].startswith("--data auto: GLUE SST-2 (glue/sst2")


def test_a_failed_hub_load_after_auto_falls_back_to_the_embedded_mix(online, monkeypatch, capsys):
    from metakd.bench import meta_update
    from metakd.data import DataError, tasks

    def hub_load(name, path, config, **kwargs):
        raise DataError("cannot load 'glue/sst2': the connection dropped")

    monkeypatch.setattr(tasks, "_hub_load", hub_load)
    args = parse_args(["--n-train", "30", "--n-eval", "10"])
    splits = meta_update.load_data(args)
    assert args.data == "embedded:easy" and len(splits["train"]) == 30
    err = capsys.readouterr().err
    assert "loading glue/sst2 failed (cannot load 'glue/sst2': the connection dropped)" in err
    # data named explicitly is never swapped
    args = parse_args(["--data", "glue/sst2"])
    with pytest.raises(DataError, match="connection dropped"):
        meta_update.load_data(args)


def test_the_default_main_job_settings():
    from metakd.bench import meta_update
    from metakd.synthetic import DIFFICULTIES

    args = parse_args([])
    assert args.data == "auto" and args.mode_list == ["none", "lora", "full"] and args.seed_list == [0]
    assert args.settings == meta_update.FULL
    assert meta_update.FULL == dict(n_train=2000, n_eval=None, steps=40, finetune_epochs=2, batch_size=32,
                                    max_length=64)
    assert meta_update.DISTILL == dict(student_lr=5e-4, teacher_lr=2e-5, pilot_lr=1e-2, quiz_fraction=0.1)
    assert meta_update.STUDENT_LAYERS == (0, 5)
    # offline, the main job runs the easy mix: half its sentences compositional (docs/main-job.md)
    assert meta_update.AUTO_EMBEDDED == "embedded:easy" and DIFFICULTIES["easy"] == 0.5
    # the existing flags still override the settings
    assert parse_args(["--steps", "7", "--n-train", "100", "--batch-size", "8"]).settings["steps"] == 7


def test_hub_progress_bars_are_off_under_no_progress_and_restored_afterwards():
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    from metakd.bench.meta_update import hub_progress_bars

    hf_logging.enable_progress_bar()
    with hub_progress_bars(False):
        assert not hf_logging.is_progress_bar_enabled() and hub_utils.are_progress_bars_disabled()
    assert hf_logging.is_progress_bar_enabled() and not hub_utils.are_progress_bars_disabled()
    with hub_progress_bars(True):
        assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with hub_progress_bars(False):
        pass
    assert not hf_logging.is_progress_bar_enabled()  # off before: stays off
    hf_logging.enable_progress_bar()


def test_teacher_layers_and_meta_batch_size_add_configurations_and_comparisons():
    from metakd.bench.meta_update import comparisons

    configs = configurations(parse_args(["--teacher-layers", "all,top:2", "--meta-batch-size", "8"]))
    by = {c.key: c for c in configs}
    assert list(by) == ["none", "lora", "lora@top:2", "full", "full@top:2"]
    assert by["none"].distill == {"meta_update": "none"}
    assert by["lora@top:2"].distill == {"meta_update": "lora", "teacher_layers": "top:2", "meta_batch_size": 8,
                                        "pilot": "restore"}
    assert by["full@top:2"].label == "full meta-update, teacher_layers=top:2"
    pairs = comparisons(configs)
    assert ("lora@top:2", "full") in pairs and ("lora@top:2", "none") in pairs and ("lora", "full") in pairs


@pytest.mark.parametrize("args", [["--teacher-layers", "top:0"], ["--teacher-layers", "all,all"],
                                  ["--teacher-layers", "3"], ["--meta-batch-size", "0"]])
def test_bad_teacher_layers_or_meta_batch_size_is_a_usage_error(args, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(args)
    assert exc.value.code == 2 and args[0] in capsys.readouterr().err
