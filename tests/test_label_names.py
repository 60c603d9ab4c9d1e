"""Label names saved with models and checked against the data's (a teacher trained on another
label set is refused, or its names mapped with label_map)."""

from __future__ import annotations

import json

import pytest

from metakd.data import DataError
from metakd.label_names import align_labels, saved_label_names, set_label_names
from metakd.models import model_config
from metakd.run import RunConfig, align_label_names

from .conftest import save_tiny_teacher

SPLITS = {"train": [("a", 0), ("b", 1)], "eval": [("c", 1)], "label_names": ["entailment", "not_entailment"]}


def test_align_refuses_other_names_and_maps_them():
    with pytest.raises(DataError, match=r"trained on labels \{'0', '1'\} but the data has \{'entailment', "
                                        r"'not_entailment'\}.*label_map"):
        align_labels(SPLITS, ["0", "1"], "para-teacher")
    # mapped: entailment is the teacher's '1' -> ids swap
    out, changed = align_labels(SPLITS, ["0", "1"], "t", label_map={"entailment": "1", "not_entailment": "0"})
    assert changed and out["train"] == [("a", 1), ("b", 0)] and out["eval"] == [("c", 0)]
    assert out["label_names"] == ["not_entailment", "entailment"]
    # the same names in another order: renumbered to the teacher's ids
    out, changed = align_labels(SPLITS, ["not_entailment", "entailment"], "t")
    assert changed and out["train"] == [("a", 1), ("b", 0)]
    assert align_labels(SPLITS, ["entailment", "not_entailment"], "t") == (SPLITS, False)
    with pytest.raises(DataError, match="label_map names data labels {'neutral'}"):
        align_labels(SPLITS, ["0", "1"], "t", label_map={"neutral": "0"})


def test_saved_teacher_names_are_checked_before_use(tmp_path):
    teacher = save_tiny_teacher(tmp_path / "para")
    run = RunConfig.from_dict({"teacher": str(teacher), "output": str(tmp_path / "out")})
    # transformers' defaults LABEL_0.. say nothing: accepted as before
    assert align_label_names(run, str(teacher), SPLITS) is SPLITS
    config = json.loads((teacher / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "0", "1": "1"}, {"0": 0, "1": 1}
    (teacher / "config.json").write_text(json.dumps(config))
    assert saved_label_names(model_config(teacher)) == ["0", "1"]
    with pytest.raises(DataError, match="trained on labels"):
        align_label_names(run, str(teacher), SPLITS)
    mapped = RunConfig.from_dict({"teacher": str(teacher), "label_map": {"entailment": "0", "not_entailment": "1"}})
    assert align_label_names(mapped, str(teacher), SPLITS)["train"] == SPLITS["train"]


def test_set_label_names_writes_config(tmp_path):
    from metakd.models import tiny_classifier

    model = tiny_classifier("bert", num_labels=2)
    set_label_names(model, ["neg", "pos"])
    model.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
