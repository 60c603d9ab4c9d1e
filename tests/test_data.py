"""Data reading, task loading, hub mapping, labels, LM corpora, quiz split, encoding and collation."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metakd.data import (
    HUB_TASKS,
    LM_CORPORA,
    PAIR_COLUMNS,
    DataError,
    EncodedDataset,
    check_labels,
    encode,
    encode_lm,
    infer_num_labels,
    labels_of,
    load_lm_corpus,
    load_task,
    loader,
    make_collator,
    paragraphs,
    read_labelled_file,
    split_quiz,
    wikitext_articles,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(),
                                  reason=f"shared data not found at {SHARED} (it sits beside the repo in CI)")


def _shared(name: str):
    return pytest.mark.skipif(not (SHARED / name).exists(),
                              reason=f"shared data set {SHARED / name} not found (it sits beside the repo in CI)")


# ---------------------------------------------------------------------------- read_labelled_file
def test_read_tsv(tmp_path):
    path = tmp_path / "train.tsv"
    # GLUE style: trailing space before the tab, quotes kept verbatim (no quoting in TSV)
    path.write_text('sentence\tlabel\nit \'s a "gem" \t1\na dull , flat film \t0\n', encoding="utf-8")
    assert read_labelled_file(path) == [('it \'s a "gem"', 1), ("a dull , flat film", 0)]


def test_read_csv_with_quoted_commas(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,label\n"good, really good",1\nbad,0\n"said ""meh""",0\n', encoding="utf-8")
    assert read_labelled_file(path) == [("good, really good", 1), ("bad", 0), ('said "meh"', 0)]


def test_read_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"review": "great fun", "sentiment": 1, "id": 3}, {"review": "awful", "sentiment": "0", "id": 4}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_labelled_file(path) == [("great fun", 1), ("awful", 0)]


def test_read_json_list_of_records(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"premise": "a man sleeps", "hypothesis": "a man is awake", "label": "contradiction"},
                                {"premise": "it rains", "hypothesis": "it is wet", "label": "entailment"}]))
    assert read_labelled_file(path) == [(("a man sleeps", "a man is awake"), "contradiction"),
                                        (("it rains", "it is wet"), "entailment")]


@pytest.mark.parametrize("content, message", [
    ('{"text": "a", "label": 1}', "list of objects"),
    ('[{"text": "a", "label": 1}, 3]', "list of objects"),
    ('[{"text": "a", "label": 1}', "not valid JSON"),
    ("[]", "no examples"),
    ("  \n", "no examples"),
])
def test_read_json_errors(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        read_labelled_file(path)
    assert str(path) in str(info.value)


def test_read_jsonl_bad_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0\n')
    with pytest.raises(DataError, match="line 3: not valid JSON"):
        read_labelled_file(path)
    path.write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2: expected a JSON object"):
        read_labelled_file(path)


def test_read_uppercase_suffix(tmp_path):
    path = tmp_path / "DATA.TSV"
    path.write_text("sentence\tlabel\nok\t1\n")
    assert read_labelled_file(path) == [("ok", 1)]


def test_read_utf8_bom(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes("\ufefftext,label\ncafé,1\n".encode("utf-8"))
    assert read_labelled_file(path) == [("café", 1)]


def test_explicit_column_names(tmp_path):
    path = tmp_path / "data.csv"
    # 'text' and 'label' exist too; the explicit names must win over the defaults
    path.write_text("text,label,body,stars\nignored,9,real text,2\nalso ignored,9,more text,3\n")
    assert read_labelled_file(path, text_column="body", label_column="stars") == [("real text", 2), ("more text", 3)]
    assert read_labelled_file(path) == [("ignored", 9), ("also ignored", 9)]
    # by position
    assert read_labelled_file(path, text_column=2, label_column=3) == [("real text", 2), ("more text", 3)]


def test_missing_explicit_column_lists_columns(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("body,stars\nnice,1\n")
    with pytest.raises(DataError) as info:
        read_labelled_file(path, text_column="sentence", label_column="stars")
    message = str(info.value)
    assert "'sentence'" in message and "body" in message and "stars" in message and str(path) in message
    with pytest.raises(DataError, match="position 5 is out of range"):
        read_labelled_file(path, text_column=5, label_column="stars")


def test_missing_default_column_lists_columns(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("body\tstars\nnice\t1\n")
    with pytest.raises(DataError) as info:
        read_labelled_file(path)
    message = str(info.value)
    assert "text" in message and "body" in message and "stars" in message
    assert "header=False" in message  # the header was guessed: say how to override
    # a text column but no label column: the label side is named
    path.write_text("sentence\tstars\nnice\t1\n")
    with pytest.raises(DataError, match="label") as info:
        read_labelled_file(path)
    assert "stars" in str(info.value)


def test_same_column_for_text_and_label(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\na,1\n")
    with pytest.raises(DataError, match="both text and label"):
        read_labelled_file(path, text_column="label")


# ---------------------------------------------------------------------------- pairs
@pytest.mark.parametrize("a, b", PAIR_COLUMNS[:5])
def test_pair_columns_detected(tmp_path, a, b):
    path = tmp_path / "data.tsv"
    path.write_text(f"idx\t{a}\t{b}\tlabel\n0\tfirst A \t first B\t1\n1\tsecond A\tsecond B\t0\n")
    assert read_labelled_file(path) == [(("first A", "first B"), 1), (("second A", "second B"), 0)]


def test_pair_columns_take_precedence_over_single_text(tmp_path):
    # QNLI: 'sentence' alone is a single-text column name; with 'question' it is the second of a pair,
    # and the pair keeps the canonical order (question, sentence), not the file's column order
    path = tmp_path / "qnli.tsv"
    path.write_text("index\tsentence\tquestion\tlabel\n0\tParis is in France.\tWhere is Paris?\tentailment\n")
    assert read_labelled_file(path) == [(("Where is Paris?", "Paris is in France."), "entailment")]


def test_mnli_style_glue_file(tmp_path):
    # GLUE's MNLI dev file: many columns, label in gold_label, labels as names
    path = tmp_path / "dev_matched.tsv"
    path.write_text("index\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
                    "0\tgov\tThe cat sat.\tA cat sat.\tentailment\tentailment\n"
                    "1\tgov\tIt is dark.\tIt is bright.\tcontradiction\tcontradiction\n")
    assert read_labelled_file(path) == [(("The cat sat.", "A cat sat."), "entailment"),
                                        (("It is dark.", "It is bright."), "contradiction")]


@pytest.mark.parametrize("spec", ["b,a", " b , a ", ("b", "a"), ["b", "a"], (1, 0)])
def test_explicit_pair_columns(tmp_path, spec):
    path = tmp_path / "data.csv"
    path.write_text("a,b,y\nA1,B1,1\nA2,B2,0\n")
    assert read_labelled_file(path, text_column=spec, label_column="y") == [(("B1", "A1"), 1), (("B2", "A2"), 0)]


def test_text_column_name_with_comma(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("title,body\tlabel\nhello, world\t1\n")
    assert read_labelled_file(path, text_column="title,body") == [("hello, world", 1)]


def test_three_text_columns_rejected(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,c,label\n1,2,3,0\n")
    with pytest.raises(DataError, match="one column, or two"):
        read_labelled_file(path, text_column="a,b,c")


# ---------------------------------------------------------------------------- headerless files
def test_headerless_tsv_detected(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("a gripping film \t1\nflat\t0\n")
    assert read_labelled_file(path) == [("a gripping film", 1), ("flat", 0)]
    # three columns: a pair, label last
    path.write_text("A man sleeps.\tA man is awake.\t2\nIt rains.\tIt is wet.\t0\n")
    assert read_labelled_file(path) == [(("A man sleeps.", "A man is awake."), 2), (("It rains.", "It is wet."), 0)]


def test_header_kept_when_known_names_or_non_integer_label(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("sentence,label\nnice,1\n")
    assert read_labelled_file(path) == [("nice", 1)]
    # a known name in the label cell alone is no evidence (a class may be called 'Quality'): asked
    path.write_text("words,text\nnice,film\n")
    with pytest.raises(DataError, match=r"is the first row \['words', 'text'\] a header or data"):
        read_labelled_file(path)
    assert read_labelled_file(path, label_column="words") == [("film", "nice")]  # a name given: a header
    # a known name elsewhere in the row, or a name cell over integer labels: a header
    path.write_text("text,stars\nnice,1\n")
    assert read_labelled_file(path, label_column="stars") == [("nice", 1)]
    path.write_text("words,stars\nnice,1\ndull,0\n")
    with pytest.raises(DataError, match="no text column"):
        read_labelled_file(path)


def test_header_false_and_true(tmp_path):
    path = tmp_path / "data.tsv"
    # string labels and no strong evidence either way: asked (never taken or dropped on a guess)
    path.write_text("great fun\tpositive\nawful\tnegative\n")
    with pytest.raises(DataError, match=r"is the first row \['great fun', 'positive'\] a header or data"):
        read_labelled_file(path)
    assert read_labelled_file(path, header=False) == [("great fun", "positive"), ("awful", "negative")]
    # header=True: a first row that would look like data is the header all the same
    path.write_text("x\t1\ngood\t0\n")
    assert read_labelled_file(path) == [("x", 1), ("good", 0)]
    assert read_labelled_file(path, header=True, text_column="x", label_column="1") == [("good", 0)]


def test_headerless_by_position(tmp_path):
    # GLUE's CoLA files: source, label, original label, sentence; no header
    path = tmp_path / "in_domain_train.tsv"
    path.write_text("gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n")
    rows = read_labelled_file(path, text_column=3, label_column=1)
    assert rows == [("Our friends won't buy this analysis.", 1), ("They drank the pub.", 0)]
    with pytest.raises(DataError, match="4 columns; say which by position"):
        read_labelled_file(path, header=False)
    with pytest.raises(DataError, match="positions 0..3"):
        read_labelled_file(path, header=False, text_column="sentence", label_column=1)


# ---------------------------------------------------------------------------- .txt
def test_read_txt_label_tab_text(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("pos\ta gripping film \n\nneg\tflat\n")
    assert read_labelled_file(path) == [("a gripping film", "pos"), ("flat", "neg")]
    path.write_text("2\tA man sleeps.\tA man is awake.\n0\tIt rains.\tIt is wet.\n")
    assert read_labelled_file(path) == [(("A man sleeps.", "A man is awake."), 2), (("It rains.", "It is wet."), 0)]


def test_read_txt_fasttext(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("__label__positive  a  gripping film\n__label__negative flat\n")
    assert read_labelled_file(path) == [("a  gripping film", "positive"), ("flat", "negative")]
    path.write_text("__label__positive good\n__label__a __label__b both\n")
    with pytest.raises(DataError, match="line 2: 2 labels.*multi-label"):
        read_labelled_file(path)
    path.write_text("__label__positive good\nno label here\n")
    with pytest.raises(DataError, match="line 2"):
        read_labelled_file(path)


@pytest.mark.parametrize("content, message", [
    ("just some running text\nmore text\n", "load_lm_corpus"),
    ("1\ta\n0\tb\tc\n", "line 2: 3 fields.*ragged"),
    ("sentence\tlabel\ngood\t1\n", "header"),
    ("1\t  \n", "empty text"),
    ("\n\n", "no examples"),
])
def test_read_txt_errors(tmp_path, content, message):
    path = tmp_path / "data.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        read_labelled_file(path)
    assert str(path) in str(info.value)


def test_txt_has_no_columns(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("1\tgood\n")
    with pytest.raises(DataError, match="no columns"):
        read_labelled_file(path, text_column="text")


# ---------------------------------------------------------------------------- labels in files
def test_string_labels_come_back_as_names(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\ngood, positive \nbad,negative\nfine,1st\n")
    assert read_labelled_file(path) == [("good", "positive"), ("bad", "negative"), ("fine", "1st")]


@pytest.mark.parametrize("suffix, content, message", [
    # names after an integer (or an integer after names): a broken file, not a label set
    (".tsv", "sentence\tlabel\ngood\t1\nbad\tpositive\n", "'positive' is a name, not an integer id"),
    (".jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": 0}\n', "0 is an integer id, not a name"),
    # a number that is not an integer: regression targets are not supported
    (".csv", "sentence,label\ngood,1\nbad,1.5\n", "'1.5' is not an integer"),
    (".jsonl", '{"text": "good", "label": 1}\n{"text": "bad", "label": 0.5}\n', "0.5 is not an integer"),
    # neither an integer nor a usable name
    (".csv", "sentence,label\ngood,1\nbad,  \n", "empty label"),
    (".jsonl", '{"text": "good", "label": 1}\n{"text": "bad", "label": [1]}\n', "neither an integer nor a label name"),
    (".jsonl", '{"text": "good", "label": 1}\n{"text": "bad", "label": null}\n', "no value in column 'label'"),
])
def test_bad_labels(tmp_path, suffix, content, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(message)) as info:
        read_labelled_file(path)
    assert "row 2" in str(info.value) and str(path) in str(info.value)


def test_integer_like_labels(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": "a", "label": 2}, {"text": "b", "label": "3"}, {"text": "c", "label": 1.0},
            {"text": "d", "label": " 04 "}, {"text": "e", "label": True}, {"text": "f", "label": "2.0"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [y for _, y in read_labelled_file(path)] == [2, 3, 1, 4, 1, 2]


# ---------------------------------------------------------------------------- file errors
@pytest.mark.parametrize("suffix, content", [(".tsv", "sentence\tlabel\n"), (".csv", ""), (".jsonl", "\n\n"),
                                             (".tsv", "\n \n"), (".json", "[]")])
def test_empty_file(tmp_path, suffix, content):
    path = tmp_path / f"empty{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match="no examples"):
        read_labelled_file(path)


@pytest.mark.parametrize("name", ["data", "data.xlsx", "data.parquet", "data.raw"])
def test_unsupported_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text("sentence\tlabel\ngood\t1\n")
    with pytest.raises(DataError, match="unsupported") as info:
        read_labelled_file(path)
    assert ".jsonl" in str(info.value) and ".txt" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_labelled_file(tmp_path / "nope.tsv")


def test_jsonl_row_missing_label_key(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "good", "label": 1}\n\n{"text": "bad"}\n')
    with pytest.raises(DataError, match=r"row 2 \(line 3\): no value in column 'label'"):
        read_labelled_file(path)


def test_csv_row_missing_text_field(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("label,text\n1,good\n0\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\): 1 fields, but the header has 2.*ragged"):
        read_labelled_file(path)


def test_tsv_ragged_row_with_extra_tab(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\tand\tworse\t0\n")
    with pytest.raises(DataError, match="row 2.*4 fields.*a tab inside a text"):
        read_labelled_file(path)


@pytest.mark.parametrize("suffix, content", [
    (".tsv", "sentence\tlabel\ngood\t1\n   \t0\n"),
    (".csv", 'premise,hypothesis,label\nx,y,1\nx,"",0\n'),
    (".jsonl", '{"text": "good", "label": 1}\n{"text": " ", "label": 0}\n'),
])
def test_empty_text_value(tmp_path, suffix, content):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match="row 2.*empty text in column") as info:
        read_labelled_file(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------- load_task
def test_load_task_embedded_sizes():
    task = load_task("embedded", n_train=200, n_eval=50)
    assert set(task) == {"train", "eval", "label_names"}
    assert task["label_names"] == ["0", "1"]
    assert len(task["train"]) == 200 and len(task["eval"]) == 50
    for text, label in task["train"] + task["eval"]:
        assert isinstance(text, str) and text
        assert label in (0, 1)
    assert not {t for t, _ in task["train"]} & {t for t, _ in task["eval"]}
    assert load_task("embedded", n_train=200, n_eval=50) == task
    assert load_task("embedded", n_train=200, n_eval=50, seed=1) != task
    with pytest.raises(DataError, match="embedded"):
        load_task("embedded", n_train=10, text_column="text")


def test_load_task_directory(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"train {i},{i % 2}\n" for i in range(30)))
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps({"text": f"ev {i}", "label": 1}) + "\n"
                                                       for i in range(7)))
    task = load_task(str(tmp_path))
    assert task["train"] == [(f"train {i}", i % 2) for i in range(30)]
    assert task["eval"] == [(f"ev {i}", 1) for i in range(7)]
    assert task["label_names"] == ["0", "1"]
    sub = load_task(str(tmp_path), n_train=10, n_eval=100)
    assert len(sub["train"]) == 10 and len(sub["eval"]) == 7
    # a subset keeps the file's order
    positions = [task["train"].index(row) for row in sub["train"]]
    assert positions == sorted(positions)


def test_load_task_directory_json_and_txt_pairs(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(
        [{"question1": f"q{i}?", "question2": f"r{i}?", "is_duplicate": i % 2} for i in range(6)]))
    (tmp_path / "dev.txt").write_text("1\tq?\tr?\n0\ts?\tt?\n")
    task = load_task(str(tmp_path))
    assert task["train"][1] == (("q1?", "r1?"), 1)
    assert task["eval"] == [(("q?", "r?"), 1), (("s?", "t?"), 0)]


def test_load_task_directory_passes_column_options(tmp_path):
    (tmp_path / "train.tsv").write_text("good\tyes\nbad\tno\nfine\tyes\n")
    (tmp_path / "dev.tsv").write_text("good\tyes\n")
    with pytest.raises(DataError, match="1 of 1 eval texts"):  # the eval text is a training text
        load_task(str(tmp_path), header=False)
    task = load_task(str(tmp_path), header=False, allow_eval_overlap=True)
    assert task["label_names"] == ["no", "yes"]
    assert task["train"] == [("good", 1), ("bad", 0), ("fine", 1)] and task["eval"] == [("good", 1)]
    task = load_task(str(tmp_path), header=False, text_column=1, label_column=0, allow_eval_overlap=True)
    assert task["label_names"] == ["bad", "fine", "good"] and task["train"][0] == ("yes", 2)


def test_load_task_string_labels_sorted_ids(tmp_path):
    (tmp_path / "train.tsv").write_text("premise\thypothesis\tlabel\n"
                                        "a\tb\tneutral\nc\td\tentailment\ne\tf\tcontradiction\ng\th\tneutral\n")
    (tmp_path / "dev.tsv").write_text("premise\thypothesis\tlabel\nx\ty\tentailment\n")
    task = load_task(str(tmp_path))
    assert task["label_names"] == ["contradiction", "entailment", "neutral"]
    assert [y for _, y in task["train"]] == [2, 1, 0, 2]
    assert task["eval"] == [(("x", "y"), 1)]
    assert infer_num_labels(task) == 3
    # an eval label the train split lacks is named
    (tmp_path / "dev.tsv").write_text("premise\thypothesis\tlabel\nx\ty\tentailment\nz\tw\thidden\n")
    with pytest.raises(DataError, match=r"eval labels \{'hidden'\} do not occur in the train split"):
        load_task(str(tmp_path))


def test_load_task_label_kinds_must_agree(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\t0\nb\t1\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nc\tpositive\n")
    with pytest.raises(DataError, match=r"eval labels \{'positive'\} are names, but the train labels are integer"):
        load_task(str(tmp_path))
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\tneg\nb\tpos\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nc\t1\n")
    with pytest.raises(DataError, match=r"eval labels \{'1'\} do not occur"):
        load_task(str(tmp_path))


def test_load_task_integer_labels_keep_values(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,3\nc,1\n")
    (tmp_path / "test.csv").write_text("text,label\nd,4\n")
    task = load_task(str(tmp_path))
    assert [y for _, y in task["train"]] == [0, 3, 1] and task["eval"] == [("d", 4)]
    assert task["label_names"] == ["0", "1", "2", "3", "4"]
    (tmp_path / "test.csv").write_text("text,label\nd,-1\n")
    with pytest.raises(DataError, match=r"negative labels \{-1\}.*unlabelled"):
        load_task(str(tmp_path))


def test_load_task_directory_without_eval_file(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\t1\n")
    with pytest.raises(DataError, match="dev") as info:
        load_task(str(tmp_path))
    assert "train.tsv" in str(info.value)  # says what it found


def test_load_task_single_file_split(tmp_path):
    path = tmp_path / "all.tsv"
    rows = [(f"sentence {i}", i % 2) for i in range(50)]
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    task = load_task(str(path), seed=3)
    assert len(task["eval"]) == 5 and len(task["train"]) == 45
    assert sorted(task["train"] + task["eval"]) == sorted(rows)
    assert load_task(str(path), seed=3) == task


def test_load_task_single_file_maps_names_over_the_whole_file(tmp_path):
    # 'rare' occurs once: wherever the seeded split puts it, it has an id
    path = tmp_path / "all.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{'b' if i % 2 else 'a'}\n" for i in range(19)) + "t19,rare\n")
    for seed in range(5):
        task = load_task(str(path), seed=seed)
        assert task["label_names"] == ["a", "b", "rare"]
        assert ("t19", 2) in task["train"] + task["eval"]
    one = tmp_path / "one.csv"
    one.write_text("text,label\nalone,1\n")
    with pytest.raises(DataError, match="too few"):
        load_task(str(one))


def test_load_task_nonexistent_path(tmp_path):
    with pytest.raises(DataError, match="not 'embedded'"):
        load_task(str(tmp_path / "no_such_dir"))
    with pytest.raises(DataError):
        load_task("glue/sst3")


@_shared("sst2")
def test_load_task_shared_sst2():
    task = load_task(str(SHARED / "sst2"))
    assert len(task["train"]) == 67_349
    assert len(task["eval"]) == 872
    assert sum(y for _, y in task["train"]) == 37_569
    assert sum(y for _, y in task["eval"]) == 444
    assert task["train"][0] == ("hide new secretions from the parental units", 0)
    assert all(t == t.strip() and t for t, _ in task["eval"])
    assert task["label_names"] == ["0", "1"] and infer_num_labels(task) == 2
    check_labels(task, 2)
    with pytest.raises(DataError, match=r"labels \{1\} outside 0..0"):
        check_labels(task, 1)

    sub = load_task(str(SHARED / "sst2"), n_train=500, n_eval=100, seed=4)
    assert len(sub["train"]) == 500 and len(sub["eval"]) == 100
    train_set = set(task["train"])
    assert all(row in train_set for row in sub["train"])
    assert set(sub["eval"]) <= set(task["eval"])
    assert load_task(str(SHARED / "sst2"), n_train=500, n_eval=100, seed=4) == sub
    assert load_task(str(SHARED / "sst2"), n_train=500, n_eval=100, seed=5)["train"] != sub["train"]


# ---------------------------------------------------------------------------- the hub (monkeypatched)
def _split(columns: dict[str, list], label_names: list[str] | None = None):
    datasets = pytest.importorskip("datasets")
    features = {k: datasets.Value("int32") if k == "idx" else datasets.Value("string") for k in columns}
    if label_names is not None:
        features["label"] = datasets.ClassLabel(names=label_names)
    else:
        kind = "int64" if isinstance(columns["label"][0], int) else "string"
        features["label"] = datasets.Value(kind)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace datasets.load_dataset: returns what the test put in ``hub.result``; records calls."""
    datasets = pytest.importorskip("datasets")

    class Hub:
        calls: list = []
        result = None
        error: Exception | None = None

    def load_dataset(path, name=None, **kwargs):
        Hub.calls.append((path, name, kwargs))
        if Hub.error is not None:
            raise Hub.error
        return Hub.result

    Hub.calls = []
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    # the quick reachability check before load_dataset would ask the real hub
    monkeypatch.setattr("metakd.data.hub.hub_status", lambda *args, **kwargs: ("reachable", ""))
    return Hub


def _glue_like(text_columns: tuple[str, ...], splits: dict[str, int], names=("no", "yes"), unlabelled=("test",)):
    datasets = pytest.importorskip("datasets")
    out = {}
    for split, n in splits.items():
        columns = {c: [f"{split} {c} {i}" for i in range(n)] for c in text_columns}
        columns["label"] = [-1] * n if split in unlabelled else [i % len(names) for i in range(n)]
        columns["idx"] = list(range(n))
        out[split] = _split(columns, list(names))
    return datasets.DatasetDict(out)


def test_hub_task_table_matches_glue():
    # the hub's column names and splits (GLUE on the hub: nyu-mll/glue; IMDb: stanfordnlp/imdb)
    expected = {"glue/sst2": (("sentence",), "validation"), "glue/mrpc": (("sentence1", "sentence2"), "validation"),
                "glue/qnli": (("question", "sentence"), "validation"),
                "glue/rte": (("sentence1", "sentence2"), "validation"),
                "glue/qqp": (("question1", "question2"), "validation"),
                "glue/mnli": (("premise", "hypothesis"), "validation_matched"), "imdb": (("text",), "test")}
    for name, (columns, eval_split) in expected.items():
        task = HUB_TASKS[name]
        assert (task.text_columns, task.label_column, task.train_split, task.eval_split) == \
            (columns, "label", "train", eval_split), name
        assert task.path == ("stanfordnlp/imdb" if name == "imdb" else "nyu-mll/glue")
        assert task.config == (None if name == "imdb" else name.split("/")[1])


@pytest.mark.parametrize("name", sorted(HUB_TASKS))
def test_load_task_hub_tasks(fake_hub, name):
    task = HUB_TASKS[name]
    splits = {"train": 6, task.eval_split: 4}
    if task.path == "nyu-mll/glue":  # GLUE's test splits are unlabelled (-1): never the eval split
        splits.update(test=3)
    if name == "glue/mnli":
        splits.update(validation_mismatched=5, test_matched=2)
    fake_hub.result = _glue_like(task.text_columns, splits, names=("neg", "neutral", "pos"),
                                 unlabelled=[s for s in splits if s.startswith("test") and s != task.eval_split])
    out = load_task(name, seed=0)
    assert fake_hub.calls == [(task.path, task.config, {})]
    assert out["label_names"] == ["neg", "neutral", "pos"]
    assert len(out["train"]) == 6 and len(out["eval"]) == 4
    text, label = out["eval"][1]
    expected = tuple(f"{task.eval_split} {c} 1" for c in task.text_columns)
    assert text == (expected[0] if len(expected) == 1 else expected) and label == 1
    assert [y for _, y in out["train"]] == [0, 1, 2, 0, 1, 2]
    sub = load_task(name, n_train=2, n_eval=1)
    assert len(sub["train"]) == 2 and len(sub["eval"]) == 1


def test_load_task_hub_general_form(fake_hub):
    datasets = pytest.importorskip("datasets")
    fake_hub.result = datasets.DatasetDict({
        "train": _split({"premise": ["p1", "p2", "p3"], "hypothesis": ["h1", "h2", "h3"],
                         "label": ["yes", "no", "yes"]}),
        "test": _split({"premise": ["p9"], "hypothesis": ["h9"], "label": ["no"]}),
    })
    out = load_task("hub:someone/nli:small")
    assert fake_hub.calls[-1] == ("someone/nli", "small", {})
    assert out["label_names"] == ["no", "yes"]
    assert out["train"] == [(("p1", "h1"), 1), (("p2", "h2"), 0), (("p3", "h3"), 1)]
    assert out["eval"] == [(("p9", "h9"), 0)]  # no validation split: test
    # explicit columns, no config
    with pytest.raises(DataError, match=r"3 of 3 eval texts \(100.0%\) are also training texts"):
        load_task("hub:someone/nli", text_column="hypothesis", label_column="label", eval_split="train")
    out = load_task("hub:someone/nli", text_column="hypothesis", label_column="label", eval_split="train",
                    allow_eval_overlap=True)
    assert fake_hub.calls[-1] == ("someone/nli", None, {})
    assert out["eval"][0] == ("h1", 1)
    with pytest.raises(DataError, match=r"no eval split 'dev'; its splits are \['train', 'test'\]"):
        load_task("hub:someone/nli", eval_split="dev")
    with pytest.raises(DataError, match="no text column 'body'"):
        load_task("hub:someone/nli", text_column="body")
    with pytest.raises(DataError, match="hub:NAME"):
        load_task("hub:")


def test_load_task_hub_without_eval_split(fake_hub):
    datasets = pytest.importorskip("datasets")
    fake_hub.result = datasets.DatasetDict({"train": _split({"text": ["a"], "label": [0]}),
                                            "unsupervised": _split({"text": ["b"], "label": [0]})})
    with pytest.raises(DataError, match="no eval split.*pass eval_split"):
        load_task("hub:x/y")


def test_load_task_hub_empty_split(fake_hub):
    datasets = pytest.importorskip("datasets")
    fake_hub.result = datasets.DatasetDict({"train": _split({"sentence": ["a", "b"], "label": [0, 1]}),
                                            "validation": _split({"sentence": ["x"], "label": [0]}).select([])})
    with pytest.raises(DataError, match="'glue/sst2', split 'validation' is empty"):
        load_task("glue/sst2")


def test_load_task_hub_unlabelled_eval_split(fake_hub):
    fake_hub.result = _glue_like(("sentence",), {"train": 4, "validation": 2, "test": 2})
    with pytest.raises(DataError, match="negative labels.*-1"):
        load_task("glue/sst2", eval_split="test")


def test_load_task_hub_error_needs_network(fake_hub):
    fake_hub.error = ConnectionError("Couldn't reach the hub")
    with pytest.raises(DataError) as info:
        load_task("glue/mrpc")
    message = str(info.value)
    assert "'glue/mrpc'" in message and "nyu-mll/glue" in message and "network" in message
    assert "Couldn't reach the hub" in message and isinstance(info.value.__cause__, ConnectionError)


# ---------------------------------------------------------------------------- check_labels / infer_num_labels
def test_check_labels_examples_and_encoded():
    examples = [("a", 0), ("b", 1), ("c", 2)]
    check_labels(examples, 3)
    with pytest.raises(DataError) as info:
        check_labels(examples + [("d", 5), ("e", -1)], 3)
    assert str(info.value) == "data: labels {-1, 5} outside 0..2 (the model has 3 labels)"
    encoded = [{"input_ids": torch.tensor([1, 2]), "labels": torch.tensor(y)} for y in (0, 1, 1)]
    check_labels(encoded, 2)
    with pytest.raises(DataError, match=r"^training data: labels \{1\} outside 0..0 \(the model has 1 labels\)$"):
        check_labels(EncodedDataset(encoded), 1, what="training data")
    with pytest.raises(DataError, match="eval data: labels"):
        check_labels({"train": examples, "eval": [("x", 7)], "label_names": ["a", "b", "c"]}, 3)
    with pytest.raises(DataError, match="positive integer"):
        check_labels(examples, 0)


def test_check_labels_rejects_names_and_token_labels():
    with pytest.raises(DataError, match="is a name"):
        check_labels([("a", "positive")], 2)
    lm_items = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([1, 2, 3])}]
    with pytest.raises(DataError, match="token sequences"):
        check_labels(lm_items, 2)
    with pytest.raises(DataError, match="token sequences"):
        labels_of(lm_items)


def test_infer_num_labels():
    assert infer_num_labels([("a", 0), ("b", 3)]) == 4
    assert infer_num_labels({"train": [("a", 0)], "eval": [("b", 2)]}) == 3
    # names beyond the largest label seen count (a class absent from a subset)
    assert infer_num_labels({"train": [("a", 0)], "eval": [("b", 1)], "label_names": ["x", "y", "z"]}) == 3
    with pytest.raises(DataError, match="only 2 label names"):
        infer_num_labels({"train": [("a", 2)], "eval": [], "label_names": ["x", "y"]})
    with pytest.raises(DataError, match="empty"):
        infer_num_labels({"train": [], "eval": []})
    with pytest.raises(DataError, match="negative"):
        infer_num_labels([("a", -1)])
    encoded = [{"labels": torch.tensor(y)} for y in (0, 4)]
    assert infer_num_labels(encoded) == 5


# ---------------------------------------------------------------------------- split_quiz
@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 300), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**31 - 1))
def test_split_quiz_properties(n, fraction, seed):
    items = [f"item{i}" for i in range(n)]
    if n - max(1, round(n * fraction)) < 1:
        with pytest.raises(DataError):
            split_quiz(items, fraction, seed)
        return
    train, quiz = split_quiz(items, fraction, seed)
    assert (train, quiz) == split_quiz(items, fraction, seed)  # deterministic
    assert not set(train) & set(quiz)  # disjoint
    assert sorted(train + quiz) == sorted(items)  # covers all
    assert len(quiz) >= 1 and len(train) >= 1
    assert abs(len(quiz) - n * fraction) <= 0.5 + 1e-9 or len(quiz) == 1
    # both sides keep the data set's order
    assert train == [x for x in items if x in set(train)]
    assert quiz == [x for x in items if x in set(quiz)]


def test_split_quiz_depends_on_seed_and_too_few_raises():
    items = list(range(100))
    assert split_quiz(items, 0.2, 0)[1] != split_quiz(items, 0.2, 1)[1]
    assert len(split_quiz(items, 0.2, 0)[1]) == 20
    with pytest.raises(DataError, match="too few"):
        split_quiz([1], 0.1, 0)


def _texts(items) -> list:
    return [item[0] if isinstance(item, tuple) else tuple(item["input_ids"].tolist()) for item in items]


@pytest.mark.parametrize("kind", ["texts", "pairs", "encoded"])
def test_split_quiz_puts_every_copy_of_a_text_on_one_side(kind):
    """Duplicated rows (with the same or another label) never straddle the split."""
    def item(i: int):
        text, label = f"text {i % 9}" if i % 3 else f"unique {i}", i % 2
        if kind == "pairs":  # the same first sentence with another second one is another pair
            return (text, f"second {i % 2}"), label
        if kind == "encoded":
            return {"input_ids": torch.tensor([len(text), *map(ord, text)]), "labels": torch.tensor(label)}
        return text, label

    items = [item(i) for i in range(90)]
    assert len(set(map(str, _texts(items)))) < len(items)
    for seed in range(5):
        train, quiz = split_quiz(items, 0.2, seed)
        assert not set(_texts(train)) & set(_texts(quiz)), f"seed {seed}: a quiz text is also a training text"
        assert len(train) + len(quiz) == len(items) and len(quiz) >= 18
        assert _texts(split_quiz(items, 0.2, seed)[1]) == _texts(quiz)  # deterministic


def test_split_quiz_without_duplicates_is_the_split_by_index():
    """Data without repeated texts split as before: the seeds of earlier runs pick the same quiz."""
    items = [(f"sentence {i}", i % 2) for i in range(50)]
    order = torch.randperm(50, generator=torch.Generator().manual_seed(11)).tolist()
    assert split_quiz(items, 0.3, 11)[1] == [items[i] for i in sorted(order[:15])]


def test_split_quiz_refuses_data_with_a_single_text():
    with pytest.raises(DataError, match="too few distinct texts"):
        split_quiz([("same", i % 2) for i in range(10)], 0.2, 0)


@_shared("sst2")
def test_split_quiz_of_sst2_shares_no_sentence():
    train = load_task(str(SHARED / "sst2"))["train"]
    texts = [t for t, _ in train]
    assert len(texts) - len(set(texts)) > 0  # SST-2's training file repeats sentences
    fit, quiz = split_quiz(train, 0.1, 0)
    assert not {t for t, _ in fit} & {t for t, _ in quiz}
    assert len(fit) + len(quiz) == len(train)


# ---------------------------------------------------------------------------- property: reading files back
_cell = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1,
                max_size=12).filter(lambda s: s == s.strip() and s)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_cell, st.one_of(st.none(), _cell), st.integers(0, 9)), min_size=1, max_size=12),
       suffix=st.sampled_from([".tsv", ".csv", ".jsonl", ".json", ".txt"]))
def test_written_examples_read_back(tmp_path_factory, rows, suffix):
    """Whatever a writer of each format puts down (single texts or pairs, with a header, integer
    labels) comes back unchanged."""
    pair = rows[0][1] is not None
    rows = [((a, b or "x") if pair else a, y) for a, b, y in rows]
    path = tmp_path_factory.mktemp("rt") / f"data{suffix}"
    names = ["sentence1", "sentence2", "label"] if pair else ["sentence", "label"]
    records = [dict(zip(names, (list(t) if pair else [t]) + [y])) for t, y in rows]
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    elif suffix == ".txt":
        path.write_text("".join("\t".join([str(y)] + (list(t) if pair else [t])) + "\n" for t, y in rows),
                        encoding="utf-8")
    elif suffix == ".tsv":  # GLUE's way: no quoting at all
        lines = ["\t".join(names)] + ["\t".join(str(r[n]) for n in names) for r in records]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    else:
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(names)
            writer.writerows([r[n] for n in names] for r in records)
    assert read_labelled_file(path) == rows


# ---------------------------------------------------------------------------- collator
def _item(ids, label, type_ids=None):
    out = {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(len(ids), dtype=torch.long)}
    if type_ids is not None:
        out["token_type_ids"] = torch.tensor(type_ids)
    out["labels"] = torch.tensor(label)
    return out


def test_collator_pads_ids_with_pad_id_and_mask_with_zero():
    batch = make_collator(7)([_item([1, 2, 3], 1, [0, 0, 1]), _item([4], 0, [1]), _item([5, 6], 1, [1, 1])])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0, 1]


def test_collator_mapping_pad_ids_for_plain_items_uses_student():
    batch = make_collator({"teacher": 3, "student": 9})([_item([1, 2], 0), _item([1], 1)])
    assert batch["input_ids"].tolist() == [[1, 2], [1, 9]]


@pytest.mark.parametrize("pad_ids, teacher_pad, student_pad", [({"teacher": 0, "student": 50256}, 0, 50256),
                                                               (5, 5, 5)])
def test_collator_teacher_student_split(pad_ids, teacher_pad, student_pad):
    def split_item(t_ids, s_ids, label):
        t, s = _item(t_ids, label), _item(s_ids, label)
        del t["labels"], s["labels"]
        return {"teacher": t, "student": s, "labels": torch.tensor(label)}

    batch = make_collator(pad_ids)([split_item([1, 2, 3], [10], 1), split_item([4], [11, 12], 0)])
    assert set(batch) == {"teacher", "student", "labels"}
    assert batch["teacher"]["input_ids"].tolist() == [[1, 2, 3], [4, teacher_pad, teacher_pad]]
    assert batch["teacher"]["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["student"]["input_ids"].tolist() == [[10, student_pad], [11, 12]]
    assert batch["student"]["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["labels"].tolist() == [1, 0]


def test_collator_lm_items_pad_labels_with_ignore_index():
    items = [{"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.ones(3, dtype=torch.long),
              "labels": torch.tensor([5, 6, 7])},
             {"input_ids": torch.tensor([8]), "attention_mask": torch.ones(1, dtype=torch.long),
              "labels": torch.tensor([8])}]
    batch = make_collator(0)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


# ---------------------------------------------------------------------------- tokenizers
@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    from metakd.models import embedded_teacher_path

    return transformers.AutoTokenizer.from_pretrained(str(embedded_teacher_path()), local_files_only=True)


LM_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.", "A gripping, well acted film; it never quite works.",
    "First Citizen: Before we proceed any further, hear me speak.", "All: Speak, speak.",
    "Earthquake victims watched doctors walk away from a field hospital.",
] * 4


@pytest.fixture(scope="module")
def lm_tokenizer():
    """A GPT-2 style tokenizer built offline: byte-level BPE, eos <|endoftext|>, no pad token."""
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(LM_TRAINING_TEXT, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    assert fast.pad_token_id is None and fast.eos_token_id == 0
    return fast


def _stream(tok, docs):
    out = []
    for i, doc in enumerate(docs):
        if i:
            out.append(tok.eos_token_id)
        out.extend(tok(doc, add_special_tokens=False)["input_ids"])
    return out


# ---------------------------------------------------------------------------- encode (real tokenizer)
EXAMPLES = [("a gripping , well acted film", 1), ("dull", 0), ("it never quite works , but it tries hard", 0)]
PAIRS = [(("A man is sleeping.", "A man is awake."), 2), (("Is it raining?", "It rains in Paris today."), 0),
         (("What is up?", "Sky."), 1)]


def test_encode_with_real_tokenizer(tokenizer):
    ds = encode(EXAMPLES, tokenizer, max_length=32)
    assert isinstance(ds, EncodedDataset) and len(ds) == 3
    assert labels_of(ds) == [1, 0, 0]
    for (text, _), item in zip(EXAMPLES, ds):
        assert set(item) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        assert item["input_ids"].tolist() == tokenizer(text)["input_ids"]
        assert item["input_ids"][0] == tokenizer.cls_token_id and item["input_ids"][-1] == tokenizer.sep_token_id
        assert item["attention_mask"].tolist() == [1] * len(item["input_ids"])
    # collated batch equals the tokenizer's own padded batch
    batch = make_collator(tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    ref = tokenizer([t for t, _ in EXAMPLES], padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(batch[key], ref[key]), key
    assert batch["labels"].tolist() == [1, 0, 0]


def test_encode_pairs_with_real_tokenizer(tokenizer):
    ds = encode(PAIRS, tokenizer, max_length=64)
    assert labels_of(ds) == [2, 0, 1]
    for ((a, b), _), item in zip(PAIRS, ds):
        ref = tokenizer(a, b)
        assert item["input_ids"].tolist() == ref["input_ids"]
        types = item["token_type_ids"].tolist()
        assert types == ref["token_type_ids"] and 0 in types and 1 in types
        # [CLS] a [SEP] b [SEP]: the second segment starts after the first [SEP]
        first_sep = item["input_ids"].tolist().index(tokenizer.sep_token_id)
        assert types[:first_sep + 1] == [0] * (first_sep + 1) and set(types[first_sep + 1:]) == {1}
    batch = make_collator(tokenizer.pad_token_id)(list(ds))
    ref = tokenizer([a for (a, _), _ in PAIRS], [b for (_, b), _ in PAIRS], padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(batch[key], ref[key]), key


def test_encode_pairs_truncate_both_sides_to_max_length(tokenizer):
    ds = encode([(("word " * 50, "other " * 50), 1)], tokenizer, max_length=16)
    ids = ds[0]["input_ids"].tolist()
    assert len(ids) == 16 and ids.count(tokenizer.sep_token_id) == 2
    assert 1 in ds[0]["token_type_ids"].tolist()  # the second text survives truncation


def test_encode_pairs_with_a_different_student_tokenizer(tokenizer, lm_tokenizer):
    ds = encode(PAIRS, tokenizer, max_length=12, student_tokenizer=lm_tokenizer)
    for ((a, b), _), item in zip(PAIRS, ds):
        assert item["teacher"]["input_ids"].tolist() == tokenizer(a, b, truncation=True, max_length=12)["input_ids"]
        assert item["student"]["input_ids"].tolist() == \
            lm_tokenizer(a, b, truncation=True, max_length=12)["input_ids"]
        assert len(item["student"]["input_ids"]) <= 12
    batch = make_collator({"teacher": tokenizer.pad_token_id, "student": 0})(list(ds))
    assert batch["labels"].tolist() == [2, 0, 1]


def test_encode_truncates_to_max_length(tokenizer):
    ds = encode([("word " * 100, 1)], tokenizer, max_length=12)
    assert len(ds[0]["input_ids"]) == 12
    assert ds[0]["input_ids"][-1] == tokenizer.sep_token_id


def test_encode_with_student_tokenizer(tokenizer):
    ds = encode(EXAMPLES, tokenizer, max_length=6, student_tokenizer=tokenizer)
    assert len(ds) == 3
    for item in ds:
        assert set(item) == {"teacher", "student", "labels"}
        assert torch.equal(item["teacher"]["input_ids"], item["student"]["input_ids"])
        assert len(item["teacher"]["input_ids"]) <= 6
    batch = make_collator({"teacher": tokenizer.pad_token_id, "student": tokenizer.pad_token_id})(list(ds))
    assert batch["teacher"]["input_ids"].shape == batch["student"]["input_ids"].shape == (3, 6)
    assert batch["labels"].tolist() == [1, 0, 0]


def test_encode_empty_raises(tokenizer):
    with pytest.raises(DataError, match="empty"):
        encode([], tokenizer)


def test_encode_rejects_mixed_kinds_and_names(tokenizer):
    with pytest.raises(DataError, match="mix single texts and text pairs"):
        encode([("a", 0), (("b", "c"), 1)], tokenizer)
    with pytest.raises(DataError, match="exactly two"):
        encode([(("a", "b", "c"), 0)], tokenizer)
    with pytest.raises(DataError, match="integer ids.*'positive'"):
        encode([("a", "positive")], tokenizer)


# ---------------------------------------------------------------------------- load_lm_corpus (files)
def test_paragraphs_and_wikitext_articles():
    assert paragraphs("\n\nOne\nline two\n \n\n  Indented\n\t\nlast\n") == ["One\nline two", "  Indented", "last"]
    wiki = (" \n = First = \n \n Text one .\n \n = = Section = = \n \n More .\n"
            " = Second = \n \n Text two .\n")
    articles = wikitext_articles(wiki)
    assert len(articles) == 2
    assert articles[0].startswith(" = First = \n") and " = = Section = = " in articles[0]
    assert articles[1] == " = Second = \n \n Text two .\n"
    assert "".join(articles) == wiki[wiki.index(" = First"):]


def test_lm_generic_txt_tail_split(tmp_path):
    path = tmp_path / "notes.txt"
    docs = [f"Paragraph {i} line one.\nline two of {i}." for i in range(20)]
    path.write_text("\n\n".join(docs) + "\n")
    corpus = load_lm_corpus(path)
    assert corpus == {"train": docs[:18], "eval": docs[18:]}
    assert load_lm_corpus(path, eval_fraction=0.25) == {"train": docs[:15], "eval": docs[15:]}


def test_lm_random_split_by_seed(tmp_path):
    path = tmp_path / "notes.txt"
    docs = [f"doc {i}" for i in range(30)]
    path.write_text("\n\n".join(docs))
    a = load_lm_corpus(path, split="random", seed=1)
    assert len(a["eval"]) == 3 and sorted(a["train"] + a["eval"]) == sorted(docs)
    assert a["train"] == [d for d in docs if d in a["train"]]  # file order kept
    assert load_lm_corpus(path, split="random", seed=1) == a
    assert load_lm_corpus(path, split="random", seed=2) != a


def test_lm_contiguous_split(tmp_path):
    path = tmp_path / "plays.txt"
    text = "".join(f"Line {i:03d} of the play.\n" for i in range(100))
    path.write_text(text)
    corpus = load_lm_corpus(path, split="contiguous")
    (train,), (held,) = corpus["train"], corpus["eval"]
    assert train + held == text and train.endswith("\n")
    assert held.startswith("Line 090") or held.startswith("Line 091")


def test_lm_default_split_by_name(tmp_path):
    (tmp_path / "tinyshakespeare").mkdir()
    plays = tmp_path / "tinyshakespeare" / "input.txt"
    plays.write_text("".join(f"A: line {i}\n\n" for i in range(40)))
    assert len(load_lm_corpus(plays)["train"]) == 1  # contiguous
    web = tmp_path / "openwebtext_first.txt"
    web.write_text("\n\n".join(f"doc {i}" for i in range(40)))
    assert load_lm_corpus(web) == load_lm_corpus(web, split="random")
    assert load_lm_corpus(web) != load_lm_corpus(web, split="tail")


def test_lm_directory_layouts(tmp_path):
    wiki = " = A = \n \n alpha .\n = B = \n \n beta .\n"
    (tmp_path / "wiki.valid.raw").write_text(wiki)
    (tmp_path / "wiki.test.raw").write_text(" = C = \n \n gamma .\n")
    assert load_lm_corpus(tmp_path) == {"train": [" = A = \n \n alpha .\n", " = B = \n \n beta .\n"],
                                        "eval": [" = C = \n \n gamma .\n"]}
    (tmp_path / "wiki.train.raw").write_text(" = T = \n \n train .\n")
    assert load_lm_corpus(tmp_path) == {"train": [" = T = \n \n train .\n"], "eval": [" = C = \n \n gamma .\n"]}
    single = tmp_path / "single"
    single.mkdir()
    (single / "book.txt").write_text("one\n\ntwo\n\nthree")
    assert load_lm_corpus(single) == {"train": ["one", "two"], "eval": ["three"]}
    (single / "other.txt").write_text("four")
    with pytest.raises(DataError, match="cannot tell the train and eval files"):
        load_lm_corpus(single)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no corpus file"):
        load_lm_corpus(empty)


@pytest.mark.parametrize("name, content, kwargs, message", [
    ("missing.txt", None, {}, "not a text file"),
    ("empty.txt", " \n\n", {}, "is empty"),
    ("data.csv", "a,b\n", {}, "unsupported corpus file type"),
    ("one.txt", "a single paragraph\nof text", {}, "need at least 2"),
    ("one.txt", "x\n\ny", {"eval_fraction": 1.0}, "eval_fraction"),
    ("one.txt", "x\n\ny", {"split": "middle"}, "split must be one of"),
    ("short.txt", "a line without end", {"split": "contiguous"}, "too short"),
])
def test_lm_corpus_errors(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_lm_corpus(path, **kwargs)


# ---------------------------------------------------------------------------- load_lm_corpus (hub, monkeypatched)
def test_lm_wikitext_from_hub(fake_hub):
    datasets = pytest.importorskip("datasets")
    lines = ["", " = Valkyria = \n", "", " Senjō no Valkyria 3 .\n", " = = Gameplay = = \n", " Play .\n",
             " = Tower = \n", " A tower .\n"]
    fake_hub.result = datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": lines})
                                            for split in ("train", "validation", "test")})
    corpus = load_lm_corpus("wikitext")
    assert fake_hub.calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", {})]
    assert corpus["train"] == [" = Valkyria = \n\n Senjō no Valkyria 3 .\n = = Gameplay = = \n Play .\n",
                               " = Tower = \n A tower .\n"]
    assert corpus["eval"] == corpus["train"]
    assert LM_CORPORA["wikitext"].eval_split == "test"


def test_lm_openwebtext_streams_only_the_first_documents(fake_hub):
    consumed = []

    def endless():
        for i in range(10**9):
            consumed.append(i)
            if i > 1000:
                raise AssertionError("read on past max_documents")
            yield {"text": f"web document {i}\n\nsecond paragraph {i}"}

    fake_hub.result = {"train": endless()}
    corpus = load_lm_corpus("openwebtext", max_documents=50, seed=3)
    assert fake_hub.calls == [("Skylion007/openwebtext", None, {"streaming": True})]
    assert len(consumed) <= 51
    assert len(corpus["train"]) == 45 and len(corpus["eval"]) == 5
    assert sorted(corpus["train"] + corpus["eval"]) == sorted(f"web document {i}\n\nsecond paragraph {i}"
                                                              for i in range(50))


def test_lm_general_hub_form(fake_hub):
    datasets = pytest.importorskip("datasets")
    fake_hub.result = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"story": ["a", " ", "b", "c"]}),
                                            "validation": datasets.Dataset.from_dict({"story": ["v"]})})
    corpus = load_lm_corpus("hub:someone/stories:en", text_column="story")
    assert fake_hub.calls[-1] == ("someone/stories", "en", {})
    assert corpus == {"train": ["a", "b", "c"], "eval": ["v"]}
    with pytest.raises(DataError, match="no column 'text'"):
        load_lm_corpus("hub:someone/stories")
    fake_hub.error = OSError("offline")
    with pytest.raises(DataError, match="'hub:someone/stories'.*network"):
        load_lm_corpus("hub:someone/stories")


# ---------------------------------------------------------------------------- encode_lm
def test_encode_lm_blocks(lm_tokenizer):
    docs = ["The quick brown fox.", "A gripping film, well acted.", "Speak, speak."]
    stream = _stream(lm_tokenizer, docs)
    assert stream.count(lm_tokenizer.eos_token_id) == 2 and len(stream) % 4  # a ragged tail to drop
    ds = encode_lm(docs, lm_tokenizer, block_size=4)
    assert len(ds) == len(stream) // 4 >= 3
    for i, item in enumerate(ds):
        assert set(item) == {"input_ids", "attention_mask", "labels"}
        assert item["input_ids"].tolist() == stream[4 * i:4 * i + 4]
        assert torch.equal(item["labels"], item["input_ids"]) and item["labels"] is not item["input_ids"]
        assert item["attention_mask"].tolist() == [1] * 4
    batch = make_collator(0)(list(ds))
    assert batch["input_ids"].shape == batch["labels"].shape == (len(ds), 4)
    first = next(iter(loader(ds, 2, make_collator(0), shuffle=False)))
    assert first["labels"].tolist() == [stream[:4], stream[4:8]]


def test_encode_lm_stride_marks_context_with_ignore_index(lm_tokenizer):
    docs = ["The quick brown fox jumps over the lazy dog."] * 2
    stream = _stream(lm_tokenizer, docs)
    ds = encode_lm(docs, lm_tokenizer, block_size=6, stride=2)
    assert len(ds) == (len(stream) - 6) // 2 + 1
    assert ds[0]["labels"].tolist() == stream[:6]
    assert ds[1]["input_ids"].tolist() == stream[2:8]
    assert ds[1]["labels"].tolist() == [-100] * 4 + stream[6:8]


def test_encode_lm_uses_sep_without_eos(tokenizer):
    # a BERT tokenizer has no eos: documents are joined with [SEP], and no [CLS]/[SEP] per document
    ds = encode_lm(["hello world", "good night"], tokenizer, block_size=5)
    assert ds[0]["input_ids"].tolist() == tokenizer("hello world", add_special_tokens=False)["input_ids"] + \
        [tokenizer.sep_token_id] + tokenizer("good night", add_special_tokens=False)["input_ids"][:5 - 3]


@pytest.mark.parametrize("docs, kwargs, message", [
    ([], {"block_size": 4}, "empty corpus"),
    (["", "  \n"], {"block_size": 4}, "empty corpus"),
    (["short"], {"block_size": 64}, "fewer than one block of 64"),
    (["text"], {"block_size": 1}, "block_size"),
    (["text"], {"block_size": 4, "stride": 5}, "stride"),
    (["text"], {"block_size": 4, "stride": 0}, "stride"),
])
def test_encode_lm_errors(lm_tokenizer, docs, kwargs, message):
    with pytest.raises(DataError, match=message):
        encode_lm(docs, lm_tokenizer, **kwargs)


_doc = st.text(alphabet="abc xyz.,\né!", min_size=1, max_size=40).filter(lambda s: s.strip())


@settings(max_examples=40, deadline=None)
@given(docs=st.lists(_doc, min_size=1, max_size=6), block_size=st.integers(2, 12))
def test_encode_lm_blocks_concatenate_to_the_stream(lm_tokenizer, docs, block_size):
    stream = _stream(lm_tokenizer, docs)
    if len(stream) < block_size:
        with pytest.raises(DataError, match="fewer than one block"):
            encode_lm(docs, lm_tokenizer, block_size)
        return
    ds = encode_lm(docs, lm_tokenizer, block_size)
    joined = [t for item in ds for t in item["input_ids"].tolist()]
    assert len(ds) == len(stream) // block_size  # the ragged tail is dropped
    assert joined == stream[:len(ds) * block_size]
    assert all(torch.equal(item["labels"], item["input_ids"]) for item in ds)


@settings(max_examples=40, deadline=None)
@given(docs=st.lists(_doc, min_size=1, max_size=6), block_size=st.integers(2, 10), data=st.data())
def test_encode_lm_stride_scores_every_token_once(lm_tokenizer, docs, block_size, data):
    stride = data.draw(st.integers(1, block_size))
    stream = _stream(lm_tokenizer, docs)
    if len(stream) < block_size:
        return
    ds = encode_lm(docs, lm_tokenizer, block_size, stride=stride)
    scored = []
    for k, item in enumerate(ds):
        assert item["input_ids"].tolist() == stream[k * stride:k * stride + block_size]
        scored += [k * stride + j for j, y in enumerate(item["labels"].tolist()) if y != -100]
    end = (len(ds) - 1) * stride + block_size
    assert scored == list(range(end))  # each token of the covered stream labelled exactly once
    # with stride 1 the windows hold the whole stream, which decodes back to the documents
    if stride == 1:
        ids = ds[0]["input_ids"].tolist() + [item["input_ids"][-1].item() for item in ds[1:]]
        text = lm_tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        assert text == "<|endoftext|>".join(docs)


# ---------------------------------------------------------------------------- shared LM corpora
@_shared("openwebtext_sample")
def test_lm_shared_openwebtext_sample():
    path = SHARED / "openwebtext_sample"
    corpus = load_lm_corpus(path, seed=0)
    docs = paragraphs((path / "openwebtext_first100docs.txt").read_text(encoding="utf-8"))
    # the sample's 100 documents and their paragraphs are both blank-line separated: 2,121 pieces
    assert len(docs) == 2_121
    assert len(corpus["eval"]) == round(len(docs) * 0.1) and len(corpus["train"]) == len(docs) - len(corpus["eval"])
    assert sorted(corpus["train"] + corpus["eval"]) == sorted(docs)
    assert corpus["train"][0].startswith("Port-au-Prince, Haiti (CNN)") or corpus["eval"][0].startswith("Port-au")
    assert load_lm_corpus(path, seed=0) == corpus and load_lm_corpus(path, seed=1) != corpus


@_shared("wikitext2")
def test_lm_shared_wikitext2():
    path = SHARED / "wikitext2"
    corpus = load_lm_corpus(path)
    valid = (path / "wiki.valid.raw").read_text(encoding="utf-8")
    test = (path / "wiki.test.raw").read_text(encoding="utf-8")
    assert len(corpus["train"]) == 60 and len(corpus["eval"]) == 62  # articles
    assert corpus["train"][0].startswith(" = Homarus gammarus = \n")
    # the articles joined give back each file from its first title on
    first_title = re.compile(r"^ = [^=].* = $", re.MULTILINE)
    assert "".join(corpus["train"]) == valid[first_title.search(valid).start():]
    assert "".join(corpus["eval"]) == test[first_title.search(test).start():]
    assert all(re.match(r" = [^=].* = \n", doc) for doc in corpus["train"] + corpus["eval"])


@_shared("tinyshakespeare")
def test_lm_shared_tinyshakespeare(lm_tokenizer):
    path = SHARED / "tinyshakespeare" / "input.txt"
    text = path.read_text(encoding="utf-8")
    corpus = load_lm_corpus(SHARED / "tinyshakespeare")
    assert corpus == load_lm_corpus(path)
    (train,), (held,) = corpus["train"], corpus["eval"]
    assert train + held == text and train.endswith("\n")
    assert 0.9 * len(text) <= len(train) < 0.9 * len(text) + 200
    ds = encode_lm(corpus["eval"], lm_tokenizer, block_size=128)
    n_tokens = len(lm_tokenizer(held, add_special_tokens=False)["input_ids"])
    assert len(ds) == n_tokens // 128 and len(ds) > 100
