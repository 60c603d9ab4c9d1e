"""Issue 31: no row taken or dropped, and no columns swapped, on weak evidence; files that are not
UTF-8 text stop with one line; eval data that is training data is counted and refused. Each case
of the issue is a test here (each failed before the fix)."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest

from metakd.data import DataError, load_task, read_labelled_file
from metakd.run import RunConfig, load_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NAMES = ("Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy")
ASPECTS = ("Quality", "Price", "Service", "Ambience")


def reviews(n: int = 40) -> list[tuple[str, str]]:
    return [(f"review number {i}, it was {'great' if i % 2 else 'awful'} honestly", "positive" if i % 2 else "negative")
            for i in range(n)]


# ---------------------------------------------------------------------------- headers
def test_name_gender_header_is_asked_not_kept_as_a_class(tmp_path):
    """``Name,Gender`` over one-word names: kept as data, it made a third class 'Gender'."""
    path = tmp_path / "names.csv"
    path.write_text("Name,Gender\n" + "".join(f"{n}{i},{'F' if i % 2 else 'M'}\n" for i, n in enumerate(NAMES * 4)))
    with pytest.raises(DataError) as info:
        load_task(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: is the first row ['Name', 'Gender'] a header or data? Its label 'Gender' "
                              "occurs in no other row (as data it would be a class of one example, beside 2 classes "
                              "of 20 examples)"), message
    assert "header: true or header: false" in message and "\n" not in message
    for options in ({"header": True, "text_column": 0, "label_column": 1},
                    {"text_column": "Name", "label_column": "Gender"}):
        task = load_task(str(path), **options)  # told, or the columns named: a header
        assert task["label_names"] == ["F", "M"] and len(task["train"]) + len(task["eval"]) == 40
    assert len(read_labelled_file(path, header=False)) == 41  # the user's word goes


def test_label_first_header_in_a_single_file_is_read_by_name(tmp_path):
    """``Sentiment<TAB>Review``: the header was kept as data and the columns swapped (41 classes)."""
    path = tmp_path / "sentiment.tsv"
    path.write_text("Sentiment\tReview\n" + "".join(f"{y}\t{t}\n" for t, y in reviews()))
    lines: list[str] = []
    task = load_task(str(path), report=lines.append)
    assert task["label_names"] == ["negative", "positive"]
    assert len(task["train"]) + len(task["eval"]) == 40
    assert all(text.startswith("review number") for text, _ in task["train"] + task["eval"])
    assert lines[0] == f"read 40 rows from {path}: header row taken: {{'Sentiment', 'Review'}} are column names"


def test_headerless_label_first_file_is_refused_as_swapped(tmp_path):
    """A headerless ``label<TAB>text`` file: the texts became the labels; only a separate eval
    file's unknown labels caught it."""
    path = tmp_path / "reviews.tsv"
    path.write_text("".join(f"{y}\t{t}\n" for t, y in reviews()))
    swapped = (r"column 1, the label, holds 40 distinct values in 40 rows .*texts, not classes; column 0 holds 2 "
               r"distinct values \({'negative', 'positive'}\): are the text and label columns swapped\? If so, set "
               r"text_column: 1, label_column: 0")
    for header in (None, False):  # asked first or told: the same refusal
        with pytest.raises(DataError, match=swapped):
            load_task(str(path), header=header)
    task = load_task(str(path), header=False, text_column=1, label_column=0)
    assert task["label_names"] == ["negative", "positive"] and len(task["train"]) + len(task["eval"]) == 40


def test_swap_check_covers_txt_and_json_and_not_integer_labels(tmp_path):
    path = tmp_path / "reviews.txt"  # label<TAB>text, written the other way round
    path.write_text("".join(f"{t}\t{y}\n" for t, y in reviews()))
    with pytest.raises(DataError, match=r"the label field, the label, holds 40 distinct.*'label<TAB>text' per line"):
        read_labelled_file(path)
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(f'{{"text": "{y}", "label": "{t}"}}\n' for t, y in reviews()))
    with pytest.raises(DataError, match="set text_column: label, label_column: text"):
        read_labelled_file(path)
    path = tmp_path / "stars.csv"  # integer ids are classes, however many
    path.write_text("text,label\n" + "".join(f"film {i},{i}\n" for i in range(12)))
    assert len(read_labelled_file(path)) == 12
    # an eval file of a many-class task may hold one example of each of its classes
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"a text {i},c{i % 12}\n" for i in range(48)))
    (tmp_path / "dev.csv").write_text("text,label\n" + "".join(f"eval text {i},c{i}\n" for i in range(12)))
    assert len(load_task(str(tmp_path))["eval"]) == 12


def test_known_label_word_in_the_first_row_keeps_the_row(tmp_path):
    """Headerless, columns by position, the first label 'Quality' (a known column word): the row
    was taken as a header and vanished (40 -> 39)."""
    path = tmp_path / "aspects.tsv"
    path.write_text("".join(f"the place was fine but row {i} says more\t{ASPECTS[i % 4]}\n" for i in range(40)))
    lines: list[str] = []
    rows = read_labelled_file(path, text_column=0, label_column=1, report=lines.append)
    assert len(rows) == 40 and rows[0] == ("the place was fine but row 0 says more", "Quality")
    assert lines == [f"read 40 rows from {path}: no header row (the first row's label 'Quality' is a label of other "
                     "rows too)"]
    # 'Quality' once, in the label cell only: no evidence either way, so asked
    path.write_text("a short note\tQuality\n" + "".join(f"row {i} says more\t{ASPECTS[1 + i % 3]}\n" for i in range(9)))
    with pytest.raises(DataError, match=r"is the first row \['a short note', 'Quality'\] a header or data"):
        read_labelled_file(path, text_column=0, label_column=1)


def test_short_first_text_with_a_one_off_label_is_asked_not_dropped(tmp_path):
    """``Happy birthday mom<TAB>joy`` first: taken as a header, the row and its class vanished (5 -> 4)."""
    path = tmp_path / "emotions.tsv"
    path.write_text("Happy birthday mom\tjoy\n" + "".join(
        f"this is a much longer message number {i} about the day\t{'anger' if i % 2 else 'sadness'}\n"
        for i in range(4)))
    for columns in ({}, {"text_column": 0, "label_column": 1}):
        with pytest.raises(DataError, match=r"is the first row \['Happy birthday mom', 'joy'\] a header or data\? "
                                            r"Its label 'joy' occurs in no other row \(as data it would be a class of "
                                            r"one example, beside 2 classes of 2 examples\)"):
            read_labelled_file(path, **columns)
    rows = read_labelled_file(path, header=False, text_column=0, label_column=1)
    assert len(rows) == 5 and rows[0] == ("Happy birthday mom", "joy")


@pytest.mark.parametrize("name", ["sst2", "mr", "trec"])
def test_shipped_data_loads_with_no_question(name):
    directory = SHARED / name
    if not directory.is_dir():
        pytest.skip(f"{directory} is absent (the project's shared data sets live there)")
    lines: list[str] = []
    task = load_task(str(directory), report=lines.append)
    assert len(task["train"]) > 1000 and task["eval"]
    decisions = [line for line in lines if line.startswith("read ")]
    assert len(decisions) == 2 and all(line.endswith("header row taken: {'sentence', 'label'} are column names")
                                       for line in decisions), lines


def test_header_key_reaches_the_reader_from_a_run_file(tmp_path):
    path = tmp_path / "emotions.tsv"
    path.write_text("Happy birthday mom\tjoy\n" + "".join(f"message {i} about the day\t{'ab'[i % 2]}\n"
                                                          for i in range(19)))
    with pytest.raises(DataError, match="header: true or header: false"):
        load_data(RunConfig.from_dict({"data": str(path)}), report=False)
    split = load_data(RunConfig.from_dict({"data": str(path), "header": False}), report=False)
    assert split["label_names"] == ["a", "b", "joy"] and len(split["train"]) + len(split["eval"]) == 20
    split = load_data(RunConfig.from_dict({"data": str(path), "header": True, "text_column": 0, "label_column": 1}),
                      report=False)
    assert len(split["train"]) + len(split["eval"]) == 19


# ---------------------------------------------------------------------------- encodings
LATIN1 = "text,label\ncafé au lait,1\nbon marché,0\n".encode("latin-1")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt", ".jsonl"])
def test_latin1_file_is_one_line_with_offset_and_conversion(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(LATIN1.replace(b",", b"\t") if suffix in (".tsv", ".txt") else LATIN1)
    with pytest.raises(DataError) as info:
        read_labelled_file(path)
    message = str(info.value)
    assert message == (f"{path}: not UTF-8: byte 0xe9 at offset 14 (line 2); the bytes look like Latin-1 (ISO-8859-1) "
                       f"text; convert the file with `iconv -f latin1 -t utf-8 {path} > {tmp_path}/data.utf8{suffix}`, "
                       "or set encoding: latin1 in the run file (encoding='latin1' in Python)")


def test_encoding_is_honoured_from_python_and_the_run_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(LATIN1)
    assert read_labelled_file(path, encoding="latin-1") == [("café au lait", 1), ("bon marché", 0)]
    split = load_data(RunConfig.from_dict({"data": {"train": str(path), "eval": str(path)}, "encoding": "latin-1",
                                           "allow_eval_overlap": True}), report=False)
    assert split["train"][0] == ("café au lait", 1)
    # Windows-1252 quotes, UTF-16 with its byte-order mark
    path.write_bytes("text,label\n\u201cquoted\u201d,1\n".encode("cp1252"))
    with pytest.raises(DataError, match="look like Windows-1252 text.*iconv -f cp1252 -t utf-8"):
        read_labelled_file(path)
    assert read_labelled_file(path, encoding="cp1252") == [("\u201cquoted\u201d", 1)]
    path.write_bytes("text,label\nnaïve,1\n".encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16 text.*iconv -f utf-16 -t utf-8.*encoding: utf-16"):
        read_labelled_file(path)
    assert read_labelled_file(path, encoding="utf-16") == [("naïve", 1)]
    with pytest.raises(DataError, match="unknown encoding 'latin-9000'"):
        read_labelled_file(path, encoding="latin-9000")
    path.write_bytes(b"text,label\n\xff\xfe\xfa,1\n")
    with pytest.raises(DataError, match=r"not utf-8 text: byte 0xff at offset 11 \(line 2\)"):
        read_labelled_file(path, encoding="utf-8")


def test_binary_files_are_one_line(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "random.csv"
    path.write_bytes(rng.randbytes(3000))
    with pytest.raises(DataError, match=rf"^{path}: a NUL byte at offset [\d,]+: a binary file, not text"):
        read_labelled_file(path)
    path.write_bytes(bytes(b or 1 for b in rng.randbytes(3000)))  # no NUL: told by its control bytes
    with pytest.raises(DataError, match=rf"^{path}: not text: byte 0x.. at offset [\d,]+ \(line [\d,]+\) is not "
                                        r"UTF-8, and [\d,]+ of the first 3,000 bytes are control bytes: a binary file"):
        read_labelled_file(path)
    path = tmp_path / "program.csv"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00\x01\x00\x00\x00\xd0\x8a")
    with pytest.raises(DataError, match=rf"^{path}: an ELF executable .*: a binary file, not text"):
        load_task(str(path))


def test_cli_prints_the_decoding_error_in_one_line(tmp_path, capsys):
    from metakd.cli import main

    data = tmp_path / "data.csv"
    data.write_bytes(LATIN1)
    run = tmp_path / "run.yaml"
    run.write_text(f"teacher: embedded\nstudent: first:1\ndata: {data}\noutput: {tmp_path / 'out'}\n")
    assert main(["distill", str(run)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"metakd: error: {data}: not UTF-8: byte 0xe9 at offset 14"), err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- eval overlap
def _directory(root: Path, train: list[str], dev: list[str]) -> str:
    root.mkdir()
    (root / "train.csv").write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(train)))
    (root / "dev.csv").write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(dev)))
    return str(root)


def test_eval_file_of_training_rows_is_refused(tmp_path):
    texts = [f"sentence {i}" for i in range(20)]
    spec = _directory(tmp_path / "copy", texts, texts[:8])
    with pytest.raises(DataError, match=r"copy: 8 of 8 eval texts \(100.0%\) are also training texts, more than 50%.*"
                                        r"allow_eval_overlap: true"):
        load_task(spec)
    lines: list[str] = []
    task = load_task(spec, allow_eval_overlap=True, report=lines.append)
    assert len(task["eval"]) == 8
    assert lines[-1] == (f"warning: {spec}: 8 of 8 eval texts (100.0%) are also training texts; scores on them are "
                         "inflated")
    with pytest.raises(DataError, match="allow_eval_overlap must be true or false"):
        load_task(spec, allow_eval_overlap="yes")


def test_eval_overlap_below_the_limit_is_a_warning(tmp_path):
    texts = [f"sentence {i}" for i in range(20)]
    spec = _directory(tmp_path / "some", texts, texts[:2] + [f"held out {i}" for i in range(6)])
    lines: list[str] = []
    load_task(spec, report=lines.append)
    assert lines[-1] == (f"warning: {spec}: 2 of 8 eval texts (25.0%) are also training texts; scores on them are "
                         "inflated")
    with pytest.warns(UserWarning, match="2 of 8 eval texts"):
        load_task(spec)
    clean = _directory(tmp_path / "clean", texts, [f"held out {i}" for i in range(8)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_task(clean)
    # the same text key as the quiz split: a pair is the same example only when both texts are
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.tsv").write_text("premise\thypothesis\tlabel\n" + "".join(
        f"p{i}\th{i}\t{i % 2}\n" for i in range(10)))
    (tmp_path / "pairs" / "dev.tsv").write_text("premise\thypothesis\tlabel\np1\th1\t1\np2\tother\t0\n")
    lines.clear()
    load_task(str(tmp_path / "pairs"), report=lines.append)
    assert "1 of 2 eval texts (50.0%)" in lines[-1]


def test_allow_eval_overlap_from_a_run_file(tmp_path):
    texts = [f"sentence {i}" for i in range(20)]
    spec = _directory(tmp_path / "copy", texts, texts[10:])
    with pytest.raises(DataError, match="10 of 10 eval texts"):
        load_data(RunConfig.from_dict({"data": spec}), report=False)
    assert len(load_data(RunConfig.from_dict({"data": spec, "allow_eval_overlap": True}), report=False)["eval"]) == 10
