"""Users' own files: header decisions from strong evidence only (no row taken or dropped on a
guess), the report of rows read, short error messages, and the data spec forms of run files."""

from __future__ import annotations

import pytest

from metakd.data import DataError, load_task, read_labelled_file

TOPICS = ("World", "Sports", "Business", "Sci/Tech")


def news_rows(n: int = 40, first_label: str | None = None) -> list[str]:
    """Rows of a headerless 4-class topic file: ``text,label`` with string labels; ``first_label``
    gives row 1 a label no other row has."""
    rows = [f'"Story {i}: markets, matches and more, told at length",{TOPICS[i % 4]}' for i in range(n)]
    if first_label is not None:
        rows[0] = f'"A storm hits the coast, told at length",{first_label}'
    return rows


def test_headerless_string_labels_keep_the_first_row(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text("\n".join(news_rows(41)) + "\n")
    lines: list[str] = []
    rows = read_labelled_file(path, text_column=0, label_column=1, report=lines.append)
    assert len(rows) == 41 and rows[0][1] == "World"
    assert lines == [f"read 41 rows from {path}: no header row (the first row's label 'World' is a label of "
                     "other rows too)"]
    # a label that only row 1 has, beside 4 classes of 10: weak evidence, so the reader asks
    path.write_text("\n".join(news_rows(41, first_label="Weather")) + "\n")
    with pytest.raises(DataError, match=r"is the first row \['A storm hits.*'Weather'\] a header or data\? Its "
                                        r"label 'Weather' occurs in no other row \(as data it would be a class of one "
                                        r"example, beside 4 classes of 10 examples\).*header: true or header: false"):
        read_labelled_file(path)
    lines.clear()
    rows = read_labelled_file(path, header=False, report=lines.append)
    assert len(rows) == 41 and rows[0] == ("A storm hits the coast, told at length", "Weather")
    assert lines == [f"read 41 rows from {path}: no header row (header: false)"]


def test_unknown_header_names_ask_for_header(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text("\n".join(["title,category"] + news_rows(8)) + "\n")
    # names no list knows, over longer texts: the shapes are no evidence; the reader asks
    with pytest.raises(DataError, match=r"is the first row \['title', 'category'\] a header or data\?"):
        read_labelled_file(path, text_column=0, label_column=1)
    # header: false keeps it as data, header: true takes it, whatever the evidence
    assert len(read_labelled_file(path, header=False, text_column=0, label_column=1)) == 9
    assert len(read_labelled_file(path, header=True, text_column=0, label_column=1)) == 8
    # a name passed as a column is strong evidence
    assert len(read_labelled_file(path, text_column="title", label_column="category")) == 8
    path.write_text("\n".join(news_rows(8)) + "\n")
    assert len(read_labelled_file(path, header=True, text_column=0, label_column=1)) == 7


def test_sentence_pair_with_bom_header(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes("\ufeffsentence1\tsentence2\tlabel\nA man sleeps.\tA man is awake.\tcontradiction\n"
                     "It rains.\tIt is wet.\tentailment\n".encode())
    lines: list[str] = []
    rows = read_labelled_file(path, report=lines.append)
    assert rows == [(("A man sleeps.", "A man is awake."), "contradiction"), (("It rains.", "It is wet."), "entailment")]
    assert lines[0].startswith(f"read 2 rows from {path}: header row taken: {{'sentence1', 'sentence2', 'label'}}")


def test_headerless_four_columns_by_position(tmp_path):
    path = tmp_path / "in_domain_train.tsv"
    path.write_text("gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n")
    lines: list[str] = []
    rows = read_labelled_file(path, text_column=3, label_column=1, report=lines.append)
    assert len(rows) == 2 and "is an integer" in lines[0]


def test_load_task_reports_every_file(tmp_path):
    (tmp_path / "train.csv").write_text("\n".join(news_rows(20)) + "\n")
    (tmp_path / "dev.csv").write_text("\n".join(row.replace("Story", "Dev story") for row in news_rows(8)) + "\n")
    lines: list[str] = []
    task = load_task(str(tmp_path), text_column=0, label_column=1, report=lines.append)
    assert (len(task["train"]), len(task["eval"])) == (20, 8) and len(lines) == 2
    assert task["label_names"] == sorted(TOPICS)


def test_swapped_columns_give_a_short_error(tmp_path):
    text = "a long text about the topic of the day, repeated so that it is long " * 4
    (tmp_path / "train.csv").write_text("".join(f'{TOPICS[i % 4]},"{text} {i}"\n' for i in range(400)))
    (tmp_path / "dev.csv").write_text("".join(f'{TOPICS[i % 4]},"{text} dev {i}"\n' for i in range(40)))
    with pytest.raises(DataError) as info:
        load_task(str(tmp_path), text_column=0, label_column=1)  # swapped: the texts are the labels
    message = str(info.value)
    assert len(message) < 1200, len(message)
    assert message.startswith(f"{tmp_path / 'train.csv'}: column 1, the label, holds 400 distinct values in 400 rows")
    assert "(400 in all)" in message and "column 0 holds 4 distinct values" in message
    assert "swapped? If so, set text_column: 1, label_column: 0" in message


def test_data_mapping_names_both_files(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\n" + "\n".join(f"good {i},pos\nbad {i},neg" for i in range(5)) + "\n")
    (tmp_path / "b.jsonl").write_text('{"text": "fine", "label": "pos"}\n')
    task = load_task({"train": str(tmp_path / "a.csv"), "eval": str(tmp_path / "b.jsonl")})
    assert (len(task["train"]), len(task["eval"]), task["label_names"]) == (10, 1, ["neg", "pos"])
    with pytest.raises(DataError, match=r"\{train: PATH, eval: PATH\}; got keys \{'test', 'train'\}"):
        load_task({"train": str(tmp_path / "a.csv"), "test": str(tmp_path / "b.jsonl")})
