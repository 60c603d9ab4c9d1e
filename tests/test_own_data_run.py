"""configs/own_data.yaml runs as written on a user's own TSV files (issue 31, item 10): from the
directory that holds my_data/, with only the model and its size set smaller for a test."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from metakd.cli import main
from metakd.run import RunConfig

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "own_data.yaml"
WORDS = {"positive": ["gripping", "lovely", "sharp", "warm"], "negative": ["dull", "clumsy", "flat", "tedious"]}


def _rows(n: int, start: int = 0) -> list[str]:
    rows = []
    for i in range(start, start + n):
        label = "positive" if i % 2 else "negative"
        rows.append(f"a {WORDS[label][i % 4]} film, take {i}\t{label}")
    return rows


def test_the_shipped_file_names_the_users_files_only():
    values = yaml.safe_load(CONFIG.read_text())
    assert values["data"] == {"train": "my_data/train.tsv", "eval": "my_data/test.tsv"}
    assert "shared" not in CONFIG.read_text()
    run = RunConfig.from_yaml(CONFIG)  # loads as written
    assert (run.text_column, run.label_column, run.header, run.output) == ("sentence", "label", True, "runs/own_data")


def test_own_data_run_end_to_end(tmp_path, tiny_encoder, monkeypatch, capsys):
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_data").mkdir()
    (tmp_path / "my_data" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(_rows(40)) + "\n")
    (tmp_path / "my_data" / "test.tsv").write_text("sentence\tlabel\n" + "\n".join(_rows(10, start=40)) + "\n")
    small = [f"teacher={tiny_encoder}", "student=first:1", "finetune.max_steps=2", "finetune.batch_size=8",
             "distill.max_steps=2", "distill.batch_size=8", "distill.max_length=16"]
    assert main(["distill", str(CONFIG), "--no-progress", *[a for s in small for a in ("--set", s)]]) == 0
    err = capsys.readouterr().err
    assert "read 40 rows from my_data/train.tsv: header row taken (header: true)" in err, err
    assert "read 10 rows from my_data/test.tsv: header row taken (header: true)" in err
    out = tmp_path / "runs" / "own_data"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label_names"] == ["negative", "positive"]
    assert "40 training and 10 evaluation examples" in err  # every row of both files
    assert 0.0 <= metrics["student"]["accuracy"] <= 1.0
    config = json.loads((out / "distilled" / "student" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert (out / "teacher" / "model.safetensors").is_file()
