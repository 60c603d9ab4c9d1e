"""Unstructured magnitude pruning, and compressed students saved and loaded back exactly."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metakd.compress import (apply_plan, bytes_on_disk, dynamic_int8, keep_pruned, load_compressed, magnitude_prune,
                             prune_structured, quantize_weights, save_compressed, sparsity)
from metakd.compress.prune import prunable_weights
from metakd.compress.storage import pack_mask, unpack_mask
from metakd.models import ModelError, tiny_causal_lm, tiny_classifier
from tests.conftest import make_batch


def _model(arch: str = "bert", seed: int = 0):
    return tiny_classifier(arch, vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, seed=seed).eval()


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# ---------------------------------------------------------------------------- magnitude pruning
@settings(max_examples=15, deadline=None)
@given(sparsity_=st.floats(0.0, 0.95), scope=st.sampled_from(["global", "layer"]))
def test_magnitude_pruning_reaches_the_requested_sparsity_exactly(sparsity_, scope):
    model = _model()
    weights = prunable_weights(model)
    before = {k: w.detach().clone() for k, w in weights.items()}
    masks = magnitude_prune(model, sparsity_, scope)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    if scope == "global":
        assert zeros == round(sparsity_ * total)
    else:
        for name, w in weights.items():
            assert int((w == 0).sum()) == round(sparsity_ * w.numel()), name
    assert sparsity(model) == pytest.approx(zeros / total)
    for name, w in weights.items():
        assert torch.equal(w == 0, ~masks[name])
        assert torch.equal(w[masks[name]], before[name][masks[name]])  # kept weights untouched


def test_magnitude_pruning_drops_the_smallest_weights():
    model = _model()
    weights = prunable_weights(model)
    before = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    masks = magnitude_prune(model, 0.5, "global")
    keep = torch.cat([m.reshape(-1) for m in masks.values()])
    assert before[~keep].max() <= before[keep].min()


def test_global_pruning_spreads_unevenly_when_layers_differ_in_scale():
    model = _model()
    name = next(iter(prunable_weights(model)))
    with torch.no_grad():
        prunable_weights(model)[name].mul_(100.0)  # one layer far larger than the others
    magnitude_prune(model, 0.5, "global")
    w = prunable_weights(model)[name]
    assert float((w == 0).float().mean()) < 0.1  # the large layer keeps nearly everything


def test_pruning_leaves_embeddings_and_norms_alone_and_rejects_bad_values():
    model = _model()
    emb = model.bert.embeddings.word_embeddings.weight.detach().clone()
    magnitude_prune(model, 0.9)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, emb)
    for bad in (1.0, -0.1, True, "half"):
        with pytest.raises(ModelError, match="sparsity"):
            magnitude_prune(_model(), bad)
    with pytest.raises(ModelError, match="scope"):
        magnitude_prune(_model(), 0.5, "row")


def test_keep_pruned_holds_zeros_through_training_with_weight_decay():
    model = _model().train()
    masks = magnitude_prune(model, 0.6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    keep_pruned(opt, model, masks)
    batch = make_batch(0, length=8)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sparsity(model) == pytest.approx(0.6, abs=1e-3)
    for name, w in prunable_weights(model).items():
        assert bool((w[~masks[name]] == 0).all())


# ---------------------------------------------------------------------------- storage
@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), seed=st.integers(0, 100))
def test_bit_masks_round_trip(shape, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5
    packed = pack_mask(mask)
    assert packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_mask(packed, tuple(shape)), mask)


def _round_trip(model, tmp_path, batch, **save):
    saved = save_compressed(model, tmp_path / "m", **save)
    loaded = load_compressed(saved)
    assert torch.equal(_logits(loaded, batch), _logits(model, batch))
    return loaded, bytes_on_disk(saved)


def test_full_precision_round_trip_and_sparse_storage_is_smaller(tmp_path):
    batch = make_batch(1, length=8)
    model = _model()
    _, dense = _round_trip(model, tmp_path / "dense", batch)
    magnitude_prune(model, 0.5)
    loaded, sparse = _round_trip(model, tmp_path / "sparse", batch)
    assert sparsity(loaded) == pytest.approx(0.5, abs=1e-3)
    linear = sum(w.numel() for w in prunable_weights(model).values())
    # half of the Linear weights dropped, one bit per weight added
    assert dense - sparse >= linear * 4 * 0.5 - linear / 8 - 4096


@pytest.mark.parametrize("bits,granularity", [(8, "channel"), (4, "tensor"), (3, "channel"), (2, "channel")])
def test_minmax_round_trip_and_size(tmp_path, bits, granularity):
    batch = make_batch(2, length=8)
    base = _model()
    _, dense = _round_trip(base, tmp_path / "fp32", batch)
    model = _model()
    codes = quantize_weights(model, bits, granularity)
    loaded, size = _round_trip(model, tmp_path / "q", batch, method="minmax", codes=codes)
    linear = sum(q.codes.numel() for q in codes.values())  # every Linear weight, head included
    packed = sum(-(-q.codes.numel() * bits // 8) for q in codes.values())
    ranges = sum(8 * q.low.numel() for q in codes.values())
    assert packed <= linear * bits / 8 + len(codes)
    # the fp32 Linear weights are replaced by packed codes and ranges; the layout in JSON and the
    # safetensors header cost a few kB more
    assert dense - size >= linear * 4 - packed - ranges - 6000
    meta = json.loads((tmp_path / "q" / "m" / "compression.json").read_text())
    assert {e["bits"] for e in meta["quantized"].values()} == {bits}


def test_pruned_then_quantized_keeps_its_zeros(tmp_path):
    batch = make_batch(3, length=8)
    model = _model()
    masks = magnitude_prune(model, 0.5)
    codes = quantize_weights(model, 4, "channel")
    from metakd.compress import apply_masks

    apply_masks(model, masks)
    loaded, _ = _round_trip(model, tmp_path, batch, method="minmax", codes=codes)
    assert sparsity(loaded) >= 0.5


def test_dynamic_int8_round_trip(tmp_path, arch):
    batch = make_batch(4, length=8)
    q = dynamic_int8(_model(arch))
    loaded, _ = _round_trip(q, tmp_path, batch, method="dynamic_int8")
    assert any("Linear" in type(m).__name__ and "dynamic" in type(m).__module__ for m in loaded.modules())


def test_structured_plan_round_trip_with_quantization(tmp_path):
    batch = make_batch(5, length=8)
    model = _model()
    params = sum(p.numel() for p in model.parameters())
    plan = prune_structured(model, heads=0.5, neurons=0.5, method="magnitude")
    assert sum(p.numel() for p in model.parameters()) < params
    codes = quantize_weights(model, 4, "channel")
    loaded, _ = _round_trip(model, tmp_path / "minmax", batch, method="minmax", codes=codes, plan=plan)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    q = dynamic_int8(model)
    _round_trip(q, tmp_path / "int8", batch, method="dynamic_int8", plan=plan)


def test_tied_causal_lm_round_trip(tmp_path):
    model = tiny_causal_lm("gpt2", hidden_size=32, num_heads=4).eval()
    model.tie_weights()
    assert model.lm_head.weight is model.transformer.wte.weight
    plan = prune_structured(model, heads=0.25, method="magnitude")
    codes = quantize_weights(model, 6, "channel")
    saved = save_compressed(model, tmp_path / "lm", method="minmax", codes=codes, plan=plan)
    loaded = load_compressed(saved)
    ids = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()


def test_corrupt_or_foreign_directories_fail_clearly(tmp_path):
    with pytest.raises(ModelError, match="not a compressed model directory"):
        load_compressed(tmp_path)
    saved = save_compressed(_model(), tmp_path / "m")
    meta = json.loads((saved / "compression.json").read_text())
    (saved / "compression.json").write_text(json.dumps(dict(meta, version=99)))
    with pytest.raises(ModelError, match="version"):
        load_compressed(saved)
    (saved / "compression.json").write_text(json.dumps(meta))
    (saved / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelError, match="cannot read"):
        load_compressed(saved)
    (saved / "compression.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_compressed(saved)


def test_a_failed_save_leaves_the_previous_one(tmp_path):
    saved = save_compressed(_model(), tmp_path / "m")
    before = (saved / "model.safetensors").read_bytes()
    with pytest.raises(ModelError):
        save_compressed(_model(seed=1), tmp_path / "m", method="minmax")  # no codes: refused mid-way
    assert (saved / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_apply_plan_is_what_loading_uses():
    model = _model()
    plan = prune_structured(model, heads=0.5, method="magnitude")
    fresh = apply_plan(_model(seed=3), plan)
    fresh.load_state_dict(model.state_dict())
    batch = make_batch(6, length=8)
    assert torch.equal(_logits(fresh, batch), _logits(model, batch))


def test_quantized_embeddings_round_trip_and_shrink(tmp_path):
    batch = make_batch(7, length=8)
    plain, with_emb = _model(), _model()
    codes = quantize_weights(plain, 4)
    _, size = _round_trip(plain, tmp_path / "plain", batch, method="minmax", codes=codes)
    codes_emb = quantize_weights(with_emb, 4, embeddings=True)
    assert "bert.embeddings.word_embeddings.weight" in codes_emb and len(codes_emb) > len(codes)
    assert len(torch.unique(with_emb.bert.embeddings.word_embeddings.weight[0])) <= 16
    _, size_emb = _round_trip(with_emb, tmp_path / "emb", batch, method="minmax", codes=codes_emb)
    assert size_emb < size - 64 * 32 * 3  # 64 x 32 word embeddings at 4 instead of 32 bits


def test_quantized_tied_embedding_moves_the_head_with_it(tmp_path):
    model = tiny_causal_lm("gpt2", hidden_size=32, num_heads=4).eval()
    model.tie_weights()
    codes = quantize_weights(model, 4, embeddings=True)
    assert "transformer.wte.weight" in codes and "lm_head.weight" not in codes
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    loaded = load_compressed(save_compressed(model, tmp_path / "lm", method="minmax", codes=codes))
    ids = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_round_trip(tmp_path, bits):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is the 'quant' extra")
    from metakd.compress.pipeline import _parameter_count
    from metakd.compress.quantize import bnb_quantize

    model = tiny_classifier("bert", vocab_size=64, hidden_size=64, num_layers=2, num_heads=4).eval()  # 4-bit blocks: 64
    q = bnb_quantize(model, bits, device="cpu")
    assert q.metakd_full_precision == {}
    assert _parameter_count(q) == sum(p.numel() for p in model.parameters())
    batch = make_batch(8, length=8)
    loaded = load_compressed(save_compressed(q, tmp_path / "bnb", method=f"bnb{bits}"))
    assert loaded.metakd_compression["method"] == f"bnb{bits}"
    assert torch.allclose(_logits(loaded, batch), _logits(q, batch), atol=1e-6)
    with pytest.raises(ModelError, match="structurally pruned"):
        save_compressed(q, tmp_path / "bad", method=f"bnb{bits}", plan={0: {"heads": [0]}})


def test_pruning_covers_the_blocks_not_the_pooler_or_head():
    model = _model()
    names = set(prunable_weights(model))
    assert names and all(n.startswith("bert.encoder.layer.") for n in names)
    magnitude_prune(model, 0.9)
    assert bool((model.classifier.weight != 0).all()) and bool((model.bert.pooler.dense.weight != 0).all())
    lm = tiny_causal_lm("llama", hidden_size=32, num_heads=4)
    assert all(n.startswith("model.layers.") for n in prunable_weights(lm))
