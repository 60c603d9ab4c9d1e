"""The distiller's random streams (metakd.rng): the caller's global RNG is left alone, a second
fit draws other batches and dropout masks, and every step and process gets its own masks."""

from __future__ import annotations

import torch

from metakd import MetaDistiller
from metakd.models import tiny_classifier
from metakd.rng import step_seed

from .test_checkpoint import EXAMPLES, _distiller


def _record(d) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The training batches' input ids and the student's embedding-dropout masks, step by step."""
    batches, masks = [], []
    step = d.step

    def recording_step(batch, quiz=None):
        batches.append(batch["input_ids"].clone())
        return step(batch, quiz)

    d.step = recording_step
    d.student.bert.embeddings.dropout.register_forward_hook(lambda m, args, out: masks.append(out.eq(0)))
    return batches, masks


def test_building_and_fitting_leave_the_global_rng_alone():
    config = _distiller("lora", 3).config  # dropout 0.1: every step draws masks
    teacher = tiny_classifier("bert", num_layers=3, hidden_size=16, seed=1, dropout=0.1)
    student = tiny_classifier("bert", num_layers=2, hidden_size=16, seed=2, dropout=0.1)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    d = MetaDistiller(teacher, student, config)
    assert torch.equal(torch.get_rng_state(), state)
    d.fit(EXAMPLES, eval_data=EXAMPLES[:8])
    d.step(*[{k: torch.stack([e[k] for e in EXAMPLES[i:i + 4]]) for k in EXAMPLES[0]} for i in (0, 4)])
    assert d.steps_done == 4
    assert torch.equal(torch.get_rng_state(), state)


def test_a_second_fit_draws_other_batches_and_masks():
    d = _distiller("none", 3)
    batches, masks = _record(d)
    d.fit(EXAMPLES)
    first = (list(batches), list(masks))
    batches.clear()
    masks.clear()
    d.fit(EXAMPLES)
    assert len(batches) == len(first[0]) == 3 and len(masks) == len(first[1]) == 3
    assert not all(torch.equal(a, b) for a, b in zip(batches, first[0])), "the second fit replayed the batches"
    assert not any(torch.equal(a, b) for a, b in zip(masks, first[1]) if a.shape == b.shape), "same dropout masks"
    # and a distiller built alike repeats the first fit exactly
    again = _distiller("none", 3)
    batches2, masks2 = _record(again)
    again.fit(EXAMPLES)
    assert all(torch.equal(a, b) for a, b in zip(batches2, first[0]))
    assert all(torch.equal(a, b) for a, b in zip(masks2, first[1]))


def test_step_seeds_differ_by_step_rank_and_seed():
    seeds = {step_seed(s, r, k) for s in range(3) for r in range(3) for k in range(50)}
    assert len(seeds) == 3 * 3 * 50 and all(0 <= x < 2**63 for x in seeds)
    assert step_seed(7, 1, 3) == step_seed(7, 1, 3)
