"""``metakd distill`` on a user's own headerless, string-labelled 4-class file, in process: every
row read and the header decision reported, label names saved with the models, the teacher's
collapse and the stopping limit reported."""

from __future__ import annotations

import json
import os

from metakd.cli import main

from .test_data_files import news_rows


def write_run(tmp_path, encoder, data, output="out", extra: str = "", header: str | None = "false") -> str:
    run = tmp_path / "run.yaml"
    run.write_text(f"""
teacher: {encoder}
student: "first:1"
data: {data}
text_column: 0
label_column: 1
{"" if header is None else f"header: {header}"}
finetune: {{epochs: 1, max_steps: 3, batch_size: 8}}
output: {tmp_path / output}
distill: {{meta_update: lora, max_steps: 2, batch_size: 8, max_length: 16, progress: false}}
{extra}""")
    return str(run)


def test_headerless_string_labelled_four_classes(tmp_path, tiny_encoder, capsys, monkeypatch):
    """The issue's done-when: every row read, the header decision reported; and the reports of a run."""
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    old_mask = os.umask(0o022)
    try:
        _headerless_run(tmp_path, tiny_encoder, capsys)
    finally:
        os.umask(old_mask)


def _headerless_run(tmp_path, encoder, capsys):
    data = tmp_path / "news.csv"
    data.write_text("\n".join(news_rows(101, first_label="Weather")) + "\n")
    # a label only the first row has: weak evidence either way, so the run asks in one line (issue 31)
    assert main(["distill", write_run(tmp_path, encoder, data, header=None), "--no-progress"]) == 2
    asked = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(asked) == 1 and "is the first row" in asked[0] and "header: true or header: false" in asked[0], asked
    assert main(["distill", write_run(tmp_path, encoder, data), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"read 101 rows from {data}: no header row (header: false)" in err
    # --no-progress hides transformers' bars too
    assert "Loading weights" not in err and "Writing model shards" not in err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["label_names"] == ["Business", "Sci/Tech", "Sports", "Weather", "World"]
    # every row: 101 rows split 91/10 (seeded), nothing eaten by a header guess
    assert "91 training and 10 evaluation examples" in err
    assert "3 steps: max_steps 3 stops it before the end of 1 epoch(s)" in err.replace("finetune.", "")
    assert "2 steps: distill.max_steps 2 stops it" in err
    for saved in ("teacher", "distilled/student"):
        config = json.loads((tmp_path / "out" / saved / "config.json").read_text())
        assert config["id2label"] == {str(i): n for i, n in enumerate(metrics["label_names"])}, saved
    # three fine-tuning steps teach a random tiny model nothing: said, and recorded
    assert "no better than predicting the majority class" in err
    assert "majority-class rate" in metrics["teacher_warning"]
    # new directories get the user's umask (the test runs under 022), not mkdtemp's 0700
    for made in ("out/teacher", "out/distilled", "out/checkpoint"):
        assert (tmp_path / made).stat().st_mode & 0o777 == 0o755, made
    # and weight files too, not safetensors' mkstemp 0600 (the cached teacher included)
    cached = list((tmp_path / "cache" / "finetuned").glob("*/model.safetensors"))
    assert cached
    for made in ("out/teacher/model.safetensors", "out/distilled/student/model.safetensors",
                 "out/checkpoint/state.safetensors", *cached):
        assert (tmp_path / made).stat().st_mode & 0o777 == 0o644, made
