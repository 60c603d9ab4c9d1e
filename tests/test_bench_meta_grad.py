"""bench/meta_grad.py: the agreement meta-gradient (rel_error_vs_higher) is computed on the same batch in
every configuration, whatever its number of steps (meta_every rows run more)."""

from __future__ import annotations

import pytest
import torch

from metakd.bench import meta_grad
from metakd.config import DistillConfig
from metakd.models import embedded_teacher_path, tiny_classifier


@pytest.fixture
def tiny_teacher_with_tokenizer(monkeypatch):
    """The bench's teacher replaced by a tiny random BERT that reads the real tokenizer's ids, so the
    batches are the embedded task's sentences (whose draw depends on how many are drawn)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_teacher_path()))

    def teacher(quick: bool):
        return tiny_classifier("bert", vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=2,
                               max_positions=32, seed=0), tokenizer

    monkeypatch.setattr(meta_grad, "_teacher", teacher)
    return tokenizer


@pytest.mark.slow
def test_agreement_batch_does_not_depend_on_the_number_of_steps(tiny_teacher_with_tokenizer, tmp_path):
    tokenizer = tiny_teacher_with_tokenizer
    first_of = [meta_grad.make_batches(n, 4, 16, tokenizer, 0, seed=0)[0]["input_ids"] for n in (2, 8)]
    assert not torch.equal(*first_of)  # why the agreement batch is drawn on its own
    dumps = []
    for i, (meta_every, steps) in enumerate([(1, 1), (2, 4)]):
        cfg = DistillConfig(meta_update="lora", meta_grad="jvp", pilot="reuse", meta_every=meta_every, batch_size=4,
                            pilot_lr=1e-2, lora_target_modules=["query", "value"], progress=False)
        spec = dict(label=f"row {i}", depth=1, backend="jvp", mode="lora", pilot="reuse", meta_every=meta_every,
                    checkpointing=False, seed=0, quick=False, device="cpu", warmup=1, steps=steps, batch_size=4,
                    seq_len=16, distill=cfg.to_dict(), dump=str(tmp_path / f"grad-{i}.pt"))
        meta_grad.run_config(spec)
        dumps.append(torch.load(spec["dump"]))
    assert dumps[0].abs().sum() > 0
    assert meta_grad.rel_error(dumps[1], dumps[0]) == 0.0
