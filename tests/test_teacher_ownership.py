"""MetaDistiller leaves the caller's teacher as it was, refuses a teacher that already carries
LoRA adapters unless told to keep them, and never trains adapters in full mode."""

from __future__ import annotations

import pytest
import torch

from metakd import DistillConfig, MetaDistiller
from metakd.models import LORA_MARKER, ModelError, attach_lora, meta_parameters, tiny_classifier

from .conftest import make_batch


def _config(mode: str, **changes) -> DistillConfig:
    return DistillConfig(meta_update=mode, meta_grad="jvp", teacher_lr=0.1, student_lr=0.1, pilot_lr=0.5,
                         progress=False, **changes)


def _student():
    return tiny_classifier("bert", num_layers=1, seed=2)


def _logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _moved_lora_distiller(teacher) -> MetaDistiller:
    d = MetaDistiller(teacher, _student(), _config("lora"))
    adapters = [p.detach().clone() for p in d.phi]
    for i in range(2):
        d.step(make_batch(2 * i), make_batch(2 * i + 1))
    assert any(not torch.equal(p, a) for p, a in zip(d.phi, adapters)), "the adapters did not move"
    return d


def test_a_lora_run_leaves_the_callers_teacher_and_a_plain_kd_run_after_it_sees_the_original():
    teacher = tiny_classifier("bert", num_layers=2, seed=1)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    flags = {n: p.requires_grad for n, p in teacher.named_parameters()}
    modules = [(n, type(m)) for n, m in teacher.named_modules()]
    batch = make_batch(9)
    original = _logits(teacher, batch)

    lora = _moved_lora_distiller(teacher)
    assert not torch.allclose(_logits(lora.teacher, batch), original)  # the meta-updated teacher differs
    assert [(n, type(m)) for n, m in teacher.named_modules()] == modules  # no adapters injected
    assert {n: p.requires_grad for n, p in teacher.named_parameters()} == flags
    assert all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())

    plain = MetaDistiller(teacher, _student(), _config("none"))
    assert not any(LORA_MARKER in n for n, _ in plain.teacher.named_parameters())
    assert plain.teacher.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in plain.teacher.state_dict().items())
    torch.testing.assert_close(_logits(plain.teacher, batch), original, rtol=0, atol=0)

    full = MetaDistiller(teacher, _student(), _config("full"))
    assert not any(LORA_MARKER in n for n, _ in full.teacher.named_parameters())
    assert len(full.phi) == len(flags)  # every weight of the original teacher, nothing else
    assert {n: p.requires_grad for n, p in teacher.named_parameters()} == flags


def test_the_weights_stay_shared_with_the_callers_teacher():
    """The distiller's copy costs no weight memory: lora and none modes read the caller's tensors."""
    teacher = tiny_classifier("bert", num_layers=2, seed=1)
    d = MetaDistiller(teacher, _student(), _config("lora"))
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
            for n, p in d.teacher.named_parameters() if LORA_MARKER not in n}
    for name, p in teacher.named_parameters():
        assert base[name].data_ptr() == p.data_ptr(), name


@pytest.mark.parametrize("mode", ["lora", "none"])
def test_a_teacher_with_adapters_is_refused_unless_kept(mode):
    teacher = tiny_classifier("bert", num_layers=2, seed=1)
    earlier = _moved_lora_distiller(teacher).teacher  # carries meta-updated adapters
    with pytest.raises(ModelError, match="already carries LoRA adapters.*keep_teacher_adapters=True"):
        MetaDistiller(earlier, _student(), _config(mode))
    kept = MetaDistiller(earlier, _student(), _config(mode), keep_teacher_adapters=True)
    adapters = {n: p for n, p in earlier.named_parameters() if LORA_MARKER in n}
    assert {n for n, _ in kept.teacher.named_parameters() if LORA_MARKER in n} == adapters.keys()
    assert all(torch.equal(p, adapters[n]) for n, p in kept.teacher.named_parameters() if n in adapters)
    batch = make_batch(9)
    torch.testing.assert_close(_logits(kept.teacher, batch), _logits(earlier, batch), rtol=0, atol=0)
    assert len(kept.phi) == (len(adapters) if mode == "lora" else 0)


@pytest.mark.parametrize("keep", [False, True])
def test_full_mode_refuses_a_teacher_with_adapters(keep):
    teacher = attach_lora(tiny_classifier("bert", num_layers=2, seed=1), 4, 8, 0.0, None)
    with pytest.raises(ModelError, match="meta_update='full'.*carries LoRA adapters.*merge"):
        MetaDistiller(teacher, _student(), _config("full"), keep_teacher_adapters=keep)


def test_full_mode_parameters_never_include_adapters():
    teacher = attach_lora(tiny_classifier("bert", num_layers=2, seed=1), 4, 8, 0.0, None)
    phi = meta_parameters(teacher, "full")
    names = {id(p): n for n, p in teacher.named_parameters()}
    assert phi and not any(LORA_MARKER in names[id(p)] for p in phi)
    assert all(not p.requires_grad for n, p in teacher.named_parameters() if LORA_MARKER in n)
