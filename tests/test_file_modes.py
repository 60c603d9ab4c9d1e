"""Saved weight files follow the umask like the directories and JSON beside them: safetensors
writes through ``mkstemp`` (0600), and every save here must undo that (issue 31, item 1)."""

from __future__ import annotations

import os

import pytest
import torch

from metakd import DistillConfig, MetaDistiller
from metakd.atomic import atomic_directory
from metakd.checkpoint import save_checkpoint
from metakd.compress.storage import save_compressed
from metakd.finetune import cached_model
from metakd.models import tiny_classifier

from .conftest import make_batch


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root):
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in root.rglob("*")}


def _expect_umask(root, mask):
    modes = _modes(root)
    assert any(name.endswith(".safetensors") for name in modes), modes
    for name, mode in modes.items():
        want = (0o777 if (root / name).is_dir() else 0o666) & ~mask
        assert mode == want, (name, oct(mode), oct(want))


def _model():
    return tiny_classifier("bert", num_layers=2, hidden_size=16, seed=1)


def test_atomic_directory_gives_safetensors_the_umask(tmp_path, umask):
    from safetensors.torch import save_file

    with atomic_directory(tmp_path / "out") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "state.safetensors"))
        (tmp / "sub").mkdir()
        save_file({"w": torch.zeros(2)}, str(tmp / "sub" / "model.safetensors"))
        (tmp / "info.json").write_text("{}")
    _expect_umask(tmp_path / "out", umask)


def test_distilled_output_and_checkpoint_follow_the_umask(tmp_path, umask):
    d = MetaDistiller(_model(), tiny_classifier("bert", num_layers=1, hidden_size=16, seed=2),
                      DistillConfig(meta_update="lora", progress=False))
    d.step(make_batch(0), make_batch(1))
    _expect_umask(d.save(tmp_path / "distilled"), umask)
    _expect_umask(save_checkpoint(tmp_path / "checkpoint", d, {"train": [], "eval": []}), umask)


def test_compressed_model_follows_the_umask(tmp_path, umask):
    _expect_umask(save_compressed(_model(), tmp_path / "compressed"), umask)


def test_cached_model_follows_the_umask(tmp_path, umask, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    _, target, cached = cached_model("k", _model, AutoModelForSequenceClassification.from_pretrained)
    assert not cached
    _expect_umask(target, umask)
