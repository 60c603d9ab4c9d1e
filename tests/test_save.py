"""MetaDistiller.save: the distilled student and the teacher's adapters reload with the Hugging Face
and peft APIs and give the same outputs; safetensors only; a save replaces the previous one whole."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from metakd import DistillConfig, MetaDistiller
from metakd.models import tiny_classifier

from .conftest import make_batch


def _pair(arch: str = "bert"):
    teacher = tiny_classifier(arch, num_layers=3, hidden_size=16, seed=1, dtype=torch.float64)
    student = tiny_classifier(arch, num_layers=2, hidden_size=16, seed=2, dtype=torch.float64)
    return teacher, student


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _no_pickles(root):
    files = [p.name for p in root.rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files), files


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_lora_teacher_and_full_student_round_trip(tmp_path, arch):
    from peft import PeftModel

    teacher, student = _pair(arch)
    cfg = DistillConfig(meta_update="lora", meta_grad="jvp", teacher_lr=1e-2, progress=False)
    d = MetaDistiller(teacher, student, cfg)
    for i in range(2):
        d.step(make_batch(i), make_batch(10 + i))
    out = d.save(tmp_path / "run")
    probe = make_batch(99)

    reloaded_student = AutoModelForSequenceClassification.from_pretrained(str(out / "student"), dtype=torch.float64)
    assert torch.allclose(_logits(reloaded_student, probe), _logits(d.student, probe), atol=1e-12)

    base, _ = _pair(arch)  # same seed: the base teacher the adapters were trained on (lora mode keeps it)
    reloaded_teacher = PeftModel.from_pretrained(base, str(out / "teacher_adapters"))
    got, want = _logits(reloaded_teacher, probe), _logits(d.teacher, probe)
    assert torch.allclose(got, want, atol=1e-12)
    assert not torch.allclose(_logits(_pair(arch)[0], probe), want)  # the adapters matter
    assert DistillConfig.from_yaml(out / "distill_config.yaml") == cfg
    _no_pickles(out)


def test_lora_student_is_saved_merged_and_as_adapters(tmp_path):
    from peft import PeftModel

    teacher, student = _pair()
    d = MetaDistiller(teacher, student, DistillConfig(meta_update="none", student_lora=True, student_lr=1e-2,
                                                      progress=False))
    for i in range(2):
        d.step(make_batch(i))
    out = d.save(tmp_path / "run")
    probe = make_batch(99)
    want = _logits(d.student, probe)
    merged = AutoModelForSequenceClassification.from_pretrained(str(out / "student"), dtype=torch.float64)
    assert torch.allclose(_logits(merged, probe), want, atol=1e-10)
    # the bare adapters on the original student give the same model (the head is saved with them)
    adapters = PeftModel.from_pretrained(_pair()[1], str(out / "student_adapters"))
    assert torch.allclose(_logits(adapters, probe), want, atol=1e-10)
    assert not (out / "teacher_adapters").exists() and not (out / "teacher").exists()  # plain KD
    _no_pickles(out)


def test_full_mode_saves_the_whole_teacher_and_a_second_save_replaces_the_first(tmp_path):
    teacher, student = _pair()
    d = MetaDistiller(teacher, student, DistillConfig(meta_update="full", meta_grad="finite_diff", teacher_lr=1e-2,
                                                      progress=False))
    d.step(make_batch(0), make_batch(1))
    first = d.save(tmp_path / "run")
    d.step(make_batch(2), make_batch(3))
    second = d.save(tmp_path / "run")
    assert first == second
    probe = make_batch(99)
    teacher_back = AutoModelForSequenceClassification.from_pretrained(str(second / "teacher"), dtype=torch.float64)
    assert torch.allclose(_logits(teacher_back, probe), _logits(d.teacher, probe), atol=1e-12)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "run"]
    assert leftovers == []  # no temporary or backup directories left behind


def test_a_failed_save_keeps_the_previous_one(tmp_path, monkeypatch):
    teacher, student = _pair()
    d = MetaDistiller(teacher, student, DistillConfig(meta_update="lora", meta_grad="jvp", progress=False))
    out = d.save(tmp_path / "run")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(DistillConfig, "save_yaml", boom)
    with pytest.raises(OSError, match="disk full"):
        d.save(tmp_path / "run")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_each_side_gets_its_own_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from metakd.models import embedded_teacher_path
    from metakd.scratch import train_bpe_tokenizer

    teacher_tok = AutoTokenizer.from_pretrained(str(embedded_teacher_path()))
    student_tok = train_bpe_tokenizer(["a few words of text", "and a few more"] * 20, vocab_size=300)
    d = MetaDistiller(tiny_classifier("bert", seed=1), tiny_classifier("bert", num_layers=1, seed=2),
                      DistillConfig(meta_update="lora", progress=False))
    out = d.save(tmp_path / "run", tokenizer=teacher_tok, student_tokenizer=student_tok)
    assert len(AutoTokenizer.from_pretrained(str(out / "student"))) == len(student_tok) < 1000 < len(teacher_tok)
    assert len(AutoTokenizer.from_pretrained(str(out / "teacher_adapters"))) == len(teacher_tok)
