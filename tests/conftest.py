"""Shared fixtures: tiny models built from configs, deterministic batches, the shared data path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metakd.models import tiny_classifier

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_batch(seed: int, batch: int = 6, length: int = 9, vocab: int = 64, labels: int = 2, pad_rows: int = 2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[:pad_rows, length - 3:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, labels, (batch,), generator=g)}


@pytest.fixture(params=["bert", "gpt2"])
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_pair(arch):
    """(teacher, student) of the same tiny architecture in float64: teacher 3 blocks, student 2."""
    teacher = tiny_classifier(arch, num_layers=3, hidden_size=16, seed=1, dtype=torch.float64)
    student = tiny_classifier(arch, num_layers=2, hidden_size=16, seed=2, dtype=torch.float64)
    return teacher, student


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (it sits beside the repo in CI)")
    return SHARED_DATA


def save_tiny_teacher(target: Path, num_heads: int = 4, dropout: float = 0.0, hidden_size: int = 32) -> Path:
    """A tiny random 2-block BERT classifier (width 32 unless ``hidden_size``; 64 or more for 4-bit
    bitsandbytes, whose blocks are 64 wide) saved in ``target`` with the bundled teacher's tokenizer:
    a run-file teacher that loads in a blink."""
    from transformers import AutoTokenizer

    from metakd.models import embedded_teacher_path

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_teacher_path()))
    model = tiny_classifier("bert", vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_layers=2,
                            num_heads=num_heads,
                            num_labels=2, max_positions=64, seed=0, dropout=dropout)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    return target


def save_tiny_encoder(target: Path) -> Path:
    """A tiny random 2-block BERT encoder without a classification head (width 32), saved with
    the bundled teacher's tokenizer: a run-file teacher that ``distill`` fine-tunes first, fast."""
    from transformers import AutoTokenizer

    from metakd.models import embedded_teacher_path

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_teacher_path()))
    model = tiny_classifier("bert", vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                            num_labels=2, max_positions=64, seed=0)
    model.bert.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    return target
