"""The fine-tuned teacher's cache key covers everything the weights depend on (issue 31, item 6):
the dtype it is fine-tuned in, the version of the fine-tuning code, a hub teacher's commit (or a
stated note when it cannot be known offline), and every file of a directory at any depth."""

from __future__ import annotations

import os

import pytest

import metakd.finetune
from metakd.finetune import cache_key
from metakd.run import RunConfig
from metakd.teacher_cache import HUB_NOTE, data_identity, source_identity, teacher_origin


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\ngood film,1\nbad film,0\n")
    return path


def _key(data, base="some/hub-id", **values):
    return cache_key(**teacher_origin(RunConfig.from_dict({"data": str(data), **values}), base, ["0", "1"]))


def test_the_dtype_is_part_of_the_key(data):
    keys = {dtype: _key(data, teacher_dtype=dtype) for dtype in ("bf16", "fp16", "fp32")}
    assert len(set(keys.values())) == 3
    assert _key(data) == keys["fp32"]  # no teacher_dtype loads float32


def test_the_fine_tuning_code_version_is_part_of_the_key(data, monkeypatch):
    before = _key(data)
    monkeypatch.setattr(metakd.finetune, "FINETUNE_VERSION", metakd.finetune.FINETUNE_VERSION + 1)
    assert _key(data) != before


def _hub_snapshot(root, repo_id, commit):
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_teacher_is_keyed_by_its_cached_commit(tmp_path, data, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    # not in the hub cache: the name, and a note that says so
    assert source_identity("org/model") == {"name": "org/model", "note": HUB_NOTE}
    unknown = _key(data, base="org/model")
    _hub_snapshot(tmp_path / "hub", "org/model", "a" * 40)
    assert source_identity("org/model") == {"name": "org/model", "revision": "a" * 40}
    first = _key(data, base="org/model")
    _hub_snapshot(tmp_path / "hub", "org/model", "b" * 40)  # a new upload, downloaded
    assert source_identity("org/model")["revision"] == "b" * 40
    assert len({unknown, first, _key(data, base="org/model")}) == 3
    assert source_identity("new:gpt2") == {"name": "new:gpt2"}


def test_directories_are_fingerprinted_at_every_depth(tmp_path, data):
    teacher = tmp_path / "teacher"
    (teacher / "sub").mkdir(parents=True)
    (teacher / "config.json").write_text("{}")
    (teacher / "sub" / "weights.bin").write_text("one")
    before = source_identity(str(teacher))
    (teacher / "sub" / "weights.bin").write_text("other!")
    after = source_identity(str(teacher))
    assert before != after and ("sub/weights.bin", 6) in [f[:2] for f in after["files"]]

    corpus = tmp_path / "corpus"
    (corpus / "part").mkdir(parents=True)
    (corpus / "top.csv").write_text("text,label\na,0\n")
    (corpus / "part" / "more.csv").write_text("text,label\nb,1\n")
    before = data_identity(str(corpus))["files"]
    (corpus / "part" / "more.csv").write_text("text,label\nc,1\n")
    after = data_identity(str(corpus))["files"]
    assert str((corpus / "part" / "more.csv").resolve()) in after and before != after
    os.utime(corpus)  # (the directory's own time does not matter)
    assert data_identity(str(corpus))["files"] == after
