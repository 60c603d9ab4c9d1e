"""What a run prints is said once and never contradicts itself (issue 31, item 5): the data is
reported once per run even when the teacher's fine-tuning or the compression reads it again, and
the untrained-head line is not followed by a cached teacher's reuse."""

from __future__ import annotations

from metakd.cli import main

from .conftest import save_tiny_teacher
from .test_data_files import news_rows
from .test_user_data_run import write_run


def test_untrained_head_then_cache_hit_is_one_consistent_line(tmp_path, tiny_encoder, capsys, monkeypatch):
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "news.csv"
    data.write_text("\n".join(news_rows(60)) + "\n")
    run = write_run(tmp_path, tiny_encoder, data)
    assert main(["distill", run, "--no-progress"]) == 0
    first = capsys.readouterr().err
    assert first.count(f"read 60 rows from {data}") == 1, first
    assert first.count("the teacher's classification head is untrained: fine-tuning it first") == 1
    assert "reusing the fine-tuned teacher" not in first
    # another output directory: the cached teacher is reused, and that is all that is said about it
    assert main(["distill", run, "--no-progress", "--output", str(tmp_path / "other")]) == 0
    second = capsys.readouterr().err
    assert second.count(f"read 60 rows from {data}") == 1, second
    assert "the teacher's classification head is untrained; reusing the fine-tuned teacher cached in" in second
    assert "fine-tuning it" not in second and "fine-tuning the teacher on" not in second


def test_a_stale_teacher_is_refitted_with_one_report_of_the_data(tmp_path, tiny_encoder, capsys, monkeypatch):
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "news.csv"
    data.write_text("\n".join(news_rows(60)) + "\n")
    run = write_run(tmp_path, tiny_encoder, data)
    assert main(["finetune-teacher", run, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["distill", run, "--no-progress", "--set", "finetune.lr=1e-4"]) == 0
    err = capsys.readouterr().err
    assert err.count(f"read 60 rows from {data}") == 1, err
    assert f"the teacher in {tmp_path / 'out' / 'teacher'} was fine-tuned with other finetune than this run: " \
           "fine-tuning it first" in err


def test_compress_after_distilling_reports_the_data_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    teacher = save_tiny_teacher(tmp_path / "teacher")
    data = tmp_path / "news.csv"
    data.write_text("\n".join(f"{row.rsplit(',', 1)[0]},{i % 2}" for i, row in enumerate(news_rows(40))) + "\n")
    run = write_run(tmp_path, teacher, data, extra="compress: {quantize: dynamic_int8}")
    assert main(["compress", run, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "distilling first" in err
    assert err.count(f"read 40 rows from {data}") == 1, err
