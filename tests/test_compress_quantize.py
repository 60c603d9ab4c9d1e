"""Quantization of a student (metakd.compress.quantize): min-max b-bit codes and their error bound,
bit packing, fake quantization of a model's Linear/Conv1D weights, Conv1D -> Linear, dynamic int8
with an exact state round trip, and a bitsandbytes copy."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from metakd.compress.quantize import (BITS, GRANULARITIES, QuantizedTensor, bnb_quantize, conv1d_to_linear,
                                      dequantize, dynamic_int8, int8_state, load_int8_state, minmax_quantize,
                                      pack_codes, quantizable_weights, quantize_weights, unpack_codes)
from metakd.models import ModelError, tiny_causal_lm, tiny_classifier

from .conftest import make_batch

EPS32 = torch.finfo(torch.float32).eps
DynamicLinear = torch.ao.nn.quantized.dynamic.Linear


def _error_bound(q: QuantizedTensor, w: torch.Tensor) -> torch.Tensor:
    """Half a quantization step per element, plus float32 rounding of the two formulas."""
    step = (q.high - q.low) / (2**q.bits - 1)
    return step / 2 + 8 * EPS32 * (w.abs() + q.low.abs() + (q.high - q.low))


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------------------- min-max codes
matrices = arrays(
    "float32", st.tuples(st.integers(1, 6), st.integers(1, 6)),
    elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
)


@settings(max_examples=150, deadline=None)
@given(w=matrices, bits=st.sampled_from(BITS), axis=st.sampled_from([None, 0, 1]))
def test_minmax_codes_and_error_bound(w, bits, axis):
    w = torch.from_numpy(w)
    q = minmax_quantize(w, bits, axis)
    levels = 2**bits - 1
    assert q.codes.dtype == torch.uint8 and q.codes.shape == w.shape
    assert int(q.codes.max()) <= levels
    assert q.bits == bits and q.axis == axis and q.dtype == torch.float32
    assert q.low.dtype == q.high.dtype == torch.float32
    if axis is None:
        assert q.low.shape == q.high.shape == torch.Size([])
        low, high = w.min(), w.max()
    else:
        other = 1 - axis
        assert q.low.shape[axis] == w.shape[axis] and q.low.shape[other] == 1
        low, high = w.amin(dim=other, keepdim=True), w.amax(dim=other, keepdim=True)
    assert torch.equal(q.low, low) and torch.equal(q.high, high)
    w_hat = dequantize(q)
    assert w_hat.dtype == w.dtype and w_hat.shape == w.shape
    assert ((w - w_hat).abs() <= _error_bound(q, w)).all()
    low_b, high_b = low.expand_as(w), high.expand_as(w)
    varying = high_b > low_b
    assert (q.codes[w == low_b] == 0).all()
    assert (q.codes[(w == high_b) & varying] == levels).all()
    assert torch.equal(w_hat[~varying], w[~varying])  # constant channels come back exactly


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_constant_tensor_is_exact(axis):
    w = torch.full((3, 4), -0.3712)
    q = minmax_quantize(w, 3, axis)
    assert torch.isfinite(dequantize(q)).all()
    assert (q.codes == 0).all() and torch.equal(dequantize(q), w)


def test_one_constant_channel_among_varying_ones():
    w = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    q = minmax_quantize(w, 2, axis=0)
    assert q.codes.tolist() == [[0, 2, 3], [0, 0, 0]]  # (2-1)/(3-1)*3 = 1.5 rounds to 2 (half to even)
    assert torch.allclose(dequantize(q), torch.tensor([[1.0, 1 + 4 / 3, 3.0], [5.0, 5.0, 5.0]]))
    assert torch.equal(dequantize(q)[1], w[1])


def test_low_precision_dtype_is_restored():
    w = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    q = minmax_quantize(w, 8, axis=0)
    assert q.dtype == torch.bfloat16 and dequantize(q).dtype == torch.bfloat16
    assert (dequantize(q).float() - w.float()).abs().max() < 0.02


def test_error_shrinks_with_more_bits():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    err = {b: (dequantize(minmax_quantize(w, b, axis=0)) - w).abs().mean().item() for b in (2, 4, 8)}
    assert err[8] < err[4] < err[2], err
    assert err[8] < err[2] / 30, err


def test_per_channel_beats_per_tensor_on_rows_of_different_scales():
    g = torch.Generator().manual_seed(1)
    scales = torch.logspace(-3, 2, 16).unsqueeze(1)  # row magnitudes from 1e-3 to 1e2
    w = torch.randn(16, 32, generator=g) * scales
    for bits in BITS:
        per_tensor = (dequantize(minmax_quantize(w, bits)) - w).abs()
        per_channel = (dequantize(minmax_quantize(w, bits, axis=0)) - w).abs()
        assert per_channel.mean() <= per_tensor.mean(), bits
        assert per_channel.mean() < 0.5 * per_tensor.mean(), bits
        assert per_channel[0].max() < per_tensor[0].max(), bits  # the smallest row gains the most


def test_per_channel_axis_reduces_over_other_dims_of_a_3d_tensor():
    w = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    q = minmax_quantize(w, 4, axis=1)
    assert q.low.shape == (1, 3, 1)
    assert q.low.flatten().tolist() == [0.0, 4.0, 8.0] and q.high.flatten().tolist() == [15.0, 19.0, 23.0]
    assert minmax_quantize(w, 4, axis=-2).axis == 1


# ---------------------------------------------------------------------------- packing
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 17, 101])
def test_pack_round_trip(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(n * 10 + bits)).to(torch.uint8)
    codes[0], codes[-1] = 2**bits - 1, 2**bits - 1  # all bits set at both ends
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, (n,)), codes)


@pytest.mark.parametrize("bits", BITS)
def test_pack_round_trip_of_a_weight_shape(bits):
    w = torch.randn(5, 7, 3, generator=torch.Generator().manual_seed(bits))
    q = minmax_quantize(w, bits, axis=0)
    packed = pack_codes(q.codes, bits)
    assert packed.numel() == math.ceil(105 * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, (5, 7, 3)), q.codes)


def test_packed_layout():
    assert pack_codes(torch.tensor([1, 2, 3], dtype=torch.uint8), 4).tolist() == [0x21, 0x03]
    assert pack_codes(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [0b00111001]
    assert pack_codes(torch.full((8,), 7, dtype=torch.uint8), 3).tolist() == [255, 255, 255]
    assert pack_codes(torch.tensor([200, 7], dtype=torch.uint8), 8).tolist() == [200, 7]


def test_pack_errors():
    with pytest.raises(ModelError, match=r"\[0, 15\]"):
        pack_codes(torch.tensor([16], dtype=torch.uint8), 4)
    with pytest.raises(ModelError, match="integer tensor"):
        pack_codes(torch.tensor([1.0]), 4)
    with pytest.raises(ModelError, match="take 2 bytes"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, (4,))


# ---------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("bits", [1, 9, 2.5, True, "4", None])
def test_bad_bits(bits):
    w = torch.randn(3, 3)
    for call in (lambda: minmax_quantize(w, bits), lambda: quantize_weights(tiny_classifier("bert"), bits),
                 lambda: pack_codes(torch.zeros(3, dtype=torch.uint8), bits)):
        with pytest.raises(ModelError, match="bits must be an integer from 2 to 8"):
            call()


@pytest.mark.parametrize("granularity", ["row", "per_channel", None])
def test_bad_granularity_leaves_the_model_alone(granularity):
    model = tiny_classifier("bert")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ModelError, match=r"granularity must be one of \('tensor', 'channel'\)"):
        quantize_weights(model, 4, granularity)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_bad_tensors():
    with pytest.raises(ModelError, match="floating-point"):
        minmax_quantize(torch.arange(6), 4)
    with pytest.raises(ModelError, match="inf or nan"):
        minmax_quantize(torch.tensor([1.0, float("nan")]), 4)
    with pytest.raises(ModelError, match="empty"):
        minmax_quantize(torch.zeros(0, 3), 4)
    with pytest.raises(ModelError, match=r"axis must be None or an integer in \[-2, 2\)"):
        minmax_quantize(torch.randn(2, 2), 4, axis=2)


# ---------------------------------------------------------------------------- model weights
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_quantize_weights_on_tiny_bert(bits, granularity):
    model = tiny_classifier("bert", hidden_size=16, num_layers=2)
    embeddings = {n: p.detach().clone() for n, p in model.named_parameters() if "embeddings" in n}
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".bias")}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert any(p.requires_grad for p in model.parameters())
    codes = quantize_weights(model, bits, granularity)
    params = dict(model.named_parameters())
    linear_weights = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert list(codes) == linear_weights and len(codes) == 2 * 6 + 2  # 6 per block, pooler, classifier
    for name, q in codes.items():
        w = params[name]
        assert torch.equal(dequantize(q), w), name
        assert not torch.equal(w, before[name]), name
        assert ((before[name] - w).abs() <= _error_bound(q, before[name])).all(), name
        if granularity == "channel":
            assert q.axis == 0 and max(len(row.unique()) for row in w) <= 2**bits, name
        else:
            assert q.axis is None and len(w.unique()) <= 2**bits, name
    assert all(torch.equal(params[n], v) for n, v in embeddings.items())
    assert all(torch.equal(params[n], v) for n, v in biases.items())
    assert all(p.requires_grad for p in model.parameters())  # still trainable


def test_quantizable_weights_on_tiny_gpt2_lm():
    model = tiny_causal_lm("gpt2", num_layers=2)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    found = quantizable_weights(model)
    names = [n for n, _, _ in found]
    assert names == [f"transformer.h.{i}.{m}" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert all(type(m).__name__ == "Conv1D" and axis == 1 for _, m, axis in found)
    wte = model.transformer.wte.weight.detach().clone()
    codes = quantize_weights(model, 2)
    assert "lm_head.weight" not in codes and torch.equal(model.transformer.wte.weight, wte)
    w = model.transformer.h[0].mlp.c_fc.weight  # [in, out]: out channels are columns
    assert codes["transformer.h.0.mlp.c_fc.weight"].low.shape == (1, w.shape[1])
    assert max(len(col.unique()) for col in w.T) <= 4 < len(w[0].unique())


def test_untied_lm_head_is_quantizable():
    model = tiny_causal_lm("llama")
    names = [n for n, _, _ in quantizable_weights(model)]
    assert names[-1] == "lm_head" and len(names) == 2 * 7 + 1


# ---------------------------------------------------------------------------- Conv1D -> Linear
def test_conv1d_to_linear_keeps_gpt2_outputs():
    model = tiny_causal_lm("gpt2", num_layers=2)
    ids = make_batch(0)["input_ids"]
    want = _logits(model, ids)
    assert conv1d_to_linear(model) is model
    assert not any(type(m).__name__ == "Conv1D" for m in model.modules())
    c_attn = model.transformer.h[0].attn.c_attn
    assert type(c_attn) is nn.Linear and (c_attn.in_features, c_attn.out_features) == (16, 48)
    assert c_attn.weight.is_contiguous()
    torch.testing.assert_close(_logits(model, ids), want, rtol=1e-5, atol=1e-6)
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie survives
    assert [a for _, _, a in quantizable_weights(model)] == [0] * 8


# ---------------------------------------------------------------------------- dynamic int8
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_dynamic_int8_classifier(arch):
    model = tiny_classifier(arch, hidden_size=32, num_layers=2).eval()
    snapshot = copy.deepcopy(model.state_dict())
    ids = make_batch(0)["input_ids"]
    want = _logits(model, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dynamic_int8 keeps torch.ao's warnings to itself
        qmodel = dynamic_int8(model)
        got = _logits(qmodel, ids)
    assert qmodel is not model and not qmodel.training
    linears = [m for m in qmodel.modules() if isinstance(m, nn.Linear)]
    dynamic = [m for m in qmodel.modules() if isinstance(m, DynamicLinear)]
    assert not linears and len(dynamic) == sum(isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
                                               for m in model.modules())
    # the original is untouched: same modules, same weights
    assert not any(isinstance(m, DynamicLinear) for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snapshot.items())
    if arch == "gpt2":
        assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    scale = want.abs().max()
    assert (got - want).abs().max() < 0.05 * scale, ((got - want).abs().max(), scale)
    assert not torch.equal(got, want)


def test_dynamic_int8_leaves_a_tied_lm_head_in_float():
    model = tiny_causal_lm("gpt2")
    qmodel = dynamic_int8(model)
    assert type(qmodel.lm_head) is nn.Linear
    assert qmodel.lm_head.weight is qmodel.transformer.wte.weight
    assert isinstance(qmodel.transformer.h[1].mlp.c_proj, DynamicLinear)
    ids = make_batch(1)["input_ids"]
    want, got = _logits(model, ids), _logits(qmodel, ids)
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_dynamic_int8_of_a_float64_model_runs_in_float32():
    model = tiny_classifier("bert", dtype=torch.float64)
    qmodel = dynamic_int8(model)
    assert next(model.parameters()).dtype == torch.float64
    assert _logits(qmodel, make_batch(0)["input_ids"]).dtype == torch.float32


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_int8_state_round_trip_is_bit_identical(arch):
    model = tiny_classifier(arch, hidden_size=32, num_layers=2)
    source = dynamic_int8(model)
    state = int8_state(source)
    assert set(state) == {n for n, m in source.named_modules() if isinstance(m, DynamicLinear)}
    for name, entry in state.items():
        assert entry["weight_int8"].dtype == torch.int8
        assert entry["scale"].dim() == 0 and entry["scale"].dtype == torch.float64 and entry["scale"] > 0
        assert entry["zero_point"].dim() == 0 and entry["zero_point"].dtype == torch.int64
    # a fresh copy of the same float model, its int8 weights first overwritten with another model's
    # (so the load below really has to move the numbers)
    target = dynamic_int8(model)
    load_int8_state(target, int8_state(dynamic_int8(tiny_classifier(arch, hidden_size=32, num_layers=2, seed=7))))
    ids = make_batch(3)["input_ids"]
    assert not torch.equal(_logits(target, ids), _logits(source, ids))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_int8_state(target, state)
    assert torch.equal(_logits(target, ids), _logits(source, ids))
    reread = int8_state(target)
    for name, entry in state.items():
        assert all(torch.equal(reread[name][k], v) for k, v in entry.items()), name


def test_load_int8_state_refuses_a_mismatch():
    source = dynamic_int8(tiny_classifier("bert", num_layers=2))
    state = int8_state(dynamic_int8(tiny_classifier("bert", num_layers=1)))
    with pytest.raises(ModelError, match="missing.*layer.1"):
        load_int8_state(source, state)
    state = int8_state(source)
    name = next(iter(state))
    state[name]["weight_int8"] = state[name]["weight_int8"].float()
    with pytest.raises(ModelError, match="must be int8"):
        load_int8_state(source, state)
    with pytest.raises(ModelError, match="dynamic_int8"):
        int8_state(tiny_classifier("bert"))


# ---------------------------------------------------------------------------- bitsandbytes
def test_bnb_8bit_copy_runs_on_cpu():
    bnb = pytest.importorskip("bitsandbytes", reason="needs bitsandbytes: pip install 'metakd[quant]'")
    model = tiny_classifier("gpt2", hidden_size=32, num_layers=2, num_heads=2)
    qmodel = bnb_quantize(model, 8, device="cpu")
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in qmodel.modules())
    assert not any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    ids = make_batch(0)["input_ids"]
    want, got = _logits(model, ids), _logits(qmodel, ids)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert (got - want).abs().max() < 0.1 * want.abs().max() + 1e-3
    with pytest.raises(ModelError, match="already quantized with bitsandbytes"):
        quantize_weights(qmodel, 4)
