"""Building students from a teacher: kept blocks by index or strategy, or a narrower random model."""

from __future__ import annotations

import math

import pytest
import torch

from metakd import DistillConfig, MetaDistiller
from metakd.models import (ModelError, find_layer_list, random_student, select_layers, student_from_teacher,
                           tiny_classifier)

from .conftest import make_batch


@pytest.mark.parametrize("n,strategy,want", [
    (6, "alternate", [0, 2, 4]), (5, "alternate", [0, 2, 4]), (1, "alternate", [0]),
    (6, "first:2", [0, 1]), (6, "first:6", [0, 1, 2, 3, 4, 5]), (6, "last:2", [4, 5]),
])
def test_select_layers(n, strategy, want):
    assert select_layers(n, strategy) == want


@pytest.mark.parametrize("strategy", ["every", "first", "first:0", "first:7", "last:-1", "alternate:2", "first:x"])
def test_select_layers_refuses_bad_strategies(strategy):
    with pytest.raises(ModelError, match="strategy"):
        select_layers(6, strategy)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
@pytest.mark.parametrize("layers", ["alternate", "last:1", [2, 0]])
def test_student_copies_the_selected_teacher_blocks(arch, layers):
    teacher = tiny_classifier(arch, num_layers=4, hidden_size=16, seed=1)
    expected = select_layers(4, layers) if isinstance(layers, str) else layers
    student = student_from_teacher(teacher, layers)
    t_blocks, s_blocks = find_layer_list(teacher)[1], find_layer_list(student)[1]
    assert len(s_blocks) == len(expected) == student.config.num_hidden_layers
    for s_block, i in zip(s_blocks, expected):
        for (n, p), (_, q) in zip(s_block.named_parameters(), t_blocks[i].named_parameters()):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), n  # a copy, not shared
    assert len(find_layer_list(teacher)[1]) == 4  # the teacher keeps its blocks
    out = student(input_ids=make_batch(0)["input_ids"]).logits
    assert out.shape == (6, 2) and torch.isfinite(out).all()


def test_student_layers_out_of_range_are_refused():
    teacher = tiny_classifier("bert", num_layers=3, hidden_size=16)
    with pytest.raises(ModelError, match="must index"):
        student_from_teacher(teacher, [0, 3])


def test_random_narrow_student_distils_with_feature_projections():
    teacher = tiny_classifier("bert", num_layers=3, hidden_size=16, seed=1, dtype=torch.float64)
    student = random_student(teacher, seed=3, num_hidden_layers=2, hidden_size=8, intermediate_size=16,
                             num_attention_heads=2).double()
    assert student.config.hidden_size == 8 and len(find_layer_list(student)[1]) == 2
    assert teacher.config.hidden_size == 16  # the teacher's config is untouched
    cfg = DistillConfig(meta_update="lora", meta_grad="jvp", feature_layers={2: 3}, feature_weight=0.5, progress=False)
    d = MetaDistiller(teacher, student, cfg)
    assert "2" in d.student_module.projections  # 8 → 16
    before = [p.detach().clone() for p in d.phi]
    metrics = d.step(make_batch(0), make_batch(1))
    assert metrics["meta"] == 1.0 and math.isfinite(metrics["student_loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, d.phi))


def test_random_student_refuses_unknown_fields_and_bad_widths():
    teacher = tiny_classifier("bert", num_layers=2, hidden_size=16)
    with pytest.raises(ModelError, match="no field"):
        random_student(teacher, n_layers=1)
    with pytest.raises(ModelError, match="multiple"):
        random_student(teacher, hidden_size=10, num_attention_heads=4)


def test_a_fresh_classification_head_is_drawn_from_the_seed_and_leaves_the_rng_alone():
    # the embedded sentence encoder has no head: loading it twice must give the same teacher to fine-tune
    from metakd.models import embedded_teacher_path, load_classifier

    torch.manual_seed(123)
    before = torch.get_rng_state()
    heads = [load_classifier(embedded_teacher_path(), 2, seed=s)[0].classifier.weight.detach().clone() for s in (0, 0, 1)]
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])
    assert torch.equal(torch.get_rng_state(), before)
