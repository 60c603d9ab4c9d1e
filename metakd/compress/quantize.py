"""Weight quantization of a distilled student.

* Min-max uniform b-bit quantization (2..8 bits, per tensor or per output channel) of every Linear /
  GPT-2 Conv1D weight, applied as fake quantization (the model keeps float weights equal to what a
  loader reconstructs from the codes), with dense bit-packing of the codes for storage.
* Dynamic int8 (``torch.ao.quantization.quantize_dynamic``) for fast CPU inference, with an exact
  state round trip (:func:`int8_state` / :func:`load_int8_state`).
* bitsandbytes 4/8-bit through :func:`metakd.quantization.quantize`.

Weights tied to an embedding (a tied ``lm_head``) are never quantized: that would change the embedding.
"""

from __future__ import annotations

import copy
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..models import ModelError, has_lora

BITS = tuple(range(2, 9))
GRANULARITIES = ("tensor", "channel")


@dataclass
class QuantizedTensor:
    """b-bit min-max codes of one weight and what it takes to reconstruct it."""

    codes: torch.Tensor  # uint8, shape of the weight, values in [0, 2**bits - 1]
    low: torch.Tensor  # float32 w_min: shape [] (per tensor) or keepdim shape (per channel)
    high: torch.Tensor  # float32 w_max, shape of low
    bits: int
    axis: int | None  # channel axis (per channel) or None (per tensor)
    dtype: torch.dtype  # dtype of the original weight


# ---------------------------------------------------------------------------- checks
def check_bits(bits: object) -> int:
    """``bits`` if it is an int in :data:`BITS`, else a ModelError naming the allowed values."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ModelError(f"bits must be an integer from {BITS[0]} to {BITS[-1]}, got {bits!r}")
    return bits


def check_granularity(granularity: object) -> str:
    if granularity not in GRANULARITIES:
        raise ModelError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return granularity  # type: ignore[return-value]


def _check_axis(axis: int | None, ndim: int) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ModelError(f"axis must be None or an integer in [{-ndim}, {ndim}) for a {ndim}-d weight, got {axis!r}")
    return axis % ndim


def _check_float_model(model: nn.Module) -> None:
    from ..quantization import is_quantized

    if is_quantized(model):
        raise ModelError("the model is already quantized with bitsandbytes; quantize a full-precision model")
    if has_lora(model):
        raise ModelError("the model has LoRA adapters; merge them first (peft's merge_and_unload())")


# ---------------------------------------------------------------------------- min-max b-bit
def minmax_quantize(w: torch.Tensor, bits: int, axis: int | None = None) -> QuantizedTensor:
    """Min-max uniform quantization ``round((w - w_min) / (w_max - w_min) * (2**bits - 1))`` in float32,
    per tensor (``axis=None``) or per slice along ``axis`` (min and max over all other dims). A constant
    tensor or channel gets codes 0 and dequantizes exactly to its value."""
    bits = check_bits(bits)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise ModelError(f"only floating-point tensors can be quantized, got {getattr(w, 'dtype', type(w))}")
    if w.numel() == 0:
        raise ModelError("cannot quantize an empty tensor")
    axis = _check_axis(axis, w.dim())
    wf = w.detach().to(torch.float32)
    if not torch.isfinite(wf).all():
        raise ModelError("cannot quantize a tensor with inf or nan values")
    low, high = _range(wf, axis)
    span = high - low
    if not torch.isfinite(span).all():
        raise ModelError("the tensor's value range overflows float32")
    levels = 2**bits - 1
    safe = torch.where(span > 0, span, torch.ones_like(span))
    codes = torch.round((wf - low) / safe * levels).clamp_(0, levels).to(torch.uint8)
    return QuantizedTensor(codes, low, high, bits, axis, w.dtype)


def _range(wf: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if axis is None:
        return wf.min(), wf.max()
    others = tuple(d for d in range(wf.dim()) if d != axis)
    if not others:  # a 1-d tensor per channel: every element is its own channel
        return wf.clone(), wf.clone()
    return wf.amin(dim=others, keepdim=True), wf.amax(dim=others, keepdim=True)


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """``codes / (2**bits - 1) * (w_max - w_min) + w_min`` in float32, cast back to the original dtype.
    Each element is within ``(w_max - w_min) / (2 * (2**bits - 1))`` of the original (plus float rounding)."""
    levels = 2 ** check_bits(q.bits) - 1
    low, high = q.low.to(torch.float32), q.high.to(torch.float32)
    return (q.codes.to(torch.float32) / levels * (high - low) + low).to(q.dtype)


# ---------------------------------------------------------------------------- bit packing
def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The flattened b-bit ``codes`` packed densely (little-endian) into ``ceil(numel * bits / 8)`` uint8
    bytes: 8 codes fill ``bits`` bytes, so 4-bit codes pair into bytes (first code in the low nibble)."""
    bits = check_bits(bits)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ModelError(f"codes must be an integer tensor, got {codes.dtype}")
    flat = codes.detach().reshape(-1).to(torch.int64)
    if flat.numel() and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ModelError(f"{bits}-bit codes must lie in [0, {2**bits - 1}]")
    if bits == 8:
        return flat.to(torch.uint8)
    n = flat.numel()
    groups = torch.nn.functional.pad(flat, (0, -n % 8)).view(-1, 8)  # 8 codes = `bits` bytes = at most 56 bits
    shifts = torch.arange(8, dtype=torch.int64) * bits
    words = (groups << shifts).sum(dim=1, keepdim=True)
    packed = ((words >> (8 * torch.arange(bits, dtype=torch.int64))) & 0xFF).to(torch.uint8).reshape(-1)
    return packed[:_packed_size(n, bits)].clone()


def unpack_codes(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The uint8 codes of ``shape`` that :func:`pack_codes` packed into ``packed``."""
    bits = check_bits(bits)
    shape = tuple(shape)
    n = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ModelError(f"packed codes must be a 1-d uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.numel() != _packed_size(n, bits):
        raise ModelError(f"{n} {bits}-bit codes take {_packed_size(n, bits)} bytes, got {packed.numel()}")
    if bits == 8:
        return packed.reshape(shape).clone()
    flat = packed.to(torch.int64)
    groups = torch.nn.functional.pad(flat, (0, -flat.numel() % bits)).view(-1, bits)
    words = (groups << (8 * torch.arange(bits, dtype=torch.int64))).sum(dim=1, keepdim=True)
    codes = (words >> (torch.arange(8, dtype=torch.int64) * bits)) & (2**bits - 1)
    return codes.reshape(-1)[:n].to(torch.uint8).reshape(shape)


def _packed_size(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


# ---------------------------------------------------------------------------- weights of a model
def _embedding_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]


def _tied_to_embedding(weight: torch.Tensor, embeddings: list[torch.Tensor]) -> bool:
    return any(weight is e or (weight.data_ptr() == e.data_ptr() and weight.data_ptr() != 0) for e in embeddings)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), torch.Tensor)


def quantizable_weights(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """``(module name, module, output-channel axis of .weight)`` of every ``nn.Linear`` (axis 0) and GPT-2
    ``Conv1D`` (weight [in, out], axis 1), in ``named_modules()`` order, except weights tied to an embedding."""
    _check_float_model(model)
    embeddings = _embedding_weights(model)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            axis = 0
        elif _is_conv1d(module):
            axis = 1
        else:
            continue
        if not _tied_to_embedding(module.weight, embeddings):
            found.append((name, module, axis))
    return found


def quantize_weights(model: nn.Module, bits: int, granularity: str = "channel",
                     embeddings: bool = False) -> dict[str, QuantizedTensor]:
    """Fake-quantize ``model`` in place: each quantizable weight becomes its min-max ``bits``-bit
    dequantized value (per output channel or per tensor). With ``embeddings`` the embedding tables
    are quantized too (per row, i.e. per token, for "channel"; a tied output head follows its
    embedding). Returns the codes by parameter name (``"<module>.weight"``); a weight shared by
    several modules is quantized once, under its first name."""
    bits, granularity = check_bits(bits), check_granularity(granularity)
    targets = quantizable_weights(model)
    if embeddings:
        targets += [(n, m, 0) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    out: dict[str, QuantizedTensor] = {}
    seen: set[int] = set()
    with torch.no_grad():
        for name, module, axis in targets:
            weight = module.weight
            if id(weight) in seen:
                continue
            seen.add(id(weight))
            q = minmax_quantize(weight, bits, axis if granularity == "channel" else None)
            weight.copy_(dequantize(q).to(weight.device))
            out[f"{name}.weight" if name else "weight"] = q
    return out


# ---------------------------------------------------------------------------- Conv1D -> Linear
def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _conv1d_as_linear(conv: nn.Module) -> nn.Linear:
    weight = conv.weight  # [in, out]
    bias = getattr(conv, "bias", None)
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None, device=weight.device,
                       dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if bias is not None:
            linear.bias.copy_(bias)
    linear.weight.requires_grad_(weight.requires_grad)
    if bias is not None:
        linear.bias.requires_grad_(bias.requires_grad)
    linear.train(conv.training)
    return linear


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replace every transformers ``Conv1D`` (``x @ W + b``, W [in, out]) in place by the equivalent
    ``nn.Linear`` (weight ``W.T``); returns ``model``."""
    if _is_conv1d(model):
        raise ModelError("conv1d_to_linear replaces Conv1D submodules; the model itself is a Conv1D")
    for name, module in [(n, m) for n, m in model.named_modules() if _is_conv1d(m)]:
        _set_module(model, name, _conv1d_as_linear(module))
    return model


# ---------------------------------------------------------------------------- dynamic int8
@contextmanager
def _quiet_ao() -> Iterator[None]:
    """Silence torch.ao.quantization's deprecation warning and the one about creating qint8 tensors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions", category=UserWarning)
        yield


def _dynamic_linear_type() -> type:
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


def dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for fast CPU inference: float32 on the CPU, Conv1D turned into Linear, in
    eval mode, and every ``nn.Linear`` not tied to an embedding replaced by torch's dynamic int8 Linear
    (per-tensor symmetric qint8 weights, activations quantized on the fly)."""
    _check_float_model(model)
    fresh = conv1d_to_linear(copy.deepcopy(model).to("cpu", torch.float32)).eval()
    embeddings = _embedding_weights(fresh)
    names = [n for n, m in fresh.named_modules()
             if type(m) is nn.Linear and not _tied_to_embedding(m.weight, embeddings)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no Linear or Conv1D layers to quantize")
    with _quiet_ao():
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(fresh, {n: default_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True)


def _dynamic_linears(model: nn.Module) -> dict[str, nn.Module]:
    kind = _dynamic_linear_type()
    found = {n: m for n, m in model.named_modules() if isinstance(m, kind)}
    if not found:
        raise ModelError(f"{type(model).__name__} has no dynamic int8 Linear layers; make one with dynamic_int8()")
    return found


def int8_state(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """``{module name: {"weight_int8", "scale", "zero_point"[, "bias"]}}`` of every dynamic int8 Linear of a
    :func:`dynamic_int8` model (per-tensor qint8 weights only)."""
    state = {}
    for name, module in _dynamic_linears(model).items():
        weight, bias = module.weight(), module.bias()
        if weight.dtype != torch.qint8 or weight.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            raise ModelError(f"{name}: only per-tensor qint8 weights are supported, got {weight.dtype} "
                             f"{weight.qscheme()}")
        entry = {"weight_int8": weight.int_repr().clone(),
                 "scale": torch.tensor(weight.q_scale(), dtype=torch.float64),
                 "zero_point": torch.tensor(weight.q_zero_point(), dtype=torch.int64)}
        if bias is not None:
            entry["bias"] = bias.detach().clone()
        state[name] = entry
    return state


def load_int8_state(model: nn.Module, state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Set the weights of a :func:`dynamic_int8` model of the same structure from :func:`int8_state`:
    the quantized weights are rebuilt exactly, so outputs are bit-identical to the source model's."""
    linears = _dynamic_linears(model)
    if set(state) != set(linears):
        missing, extra = sorted(set(linears) - set(state)), sorted(set(state) - set(linears))
        raise ModelError(f"int8 state does not match the model: missing {missing}, unexpected {extra}")
    for name, module in linears.items():
        entry = state[name]
        int8 = entry["weight_int8"]
        expected = (module.out_features, module.in_features)
        if int8.dtype != torch.int8 or tuple(int8.shape) != expected:
            raise ModelError(f"{name}: weight_int8 must be int8 of shape {expected}, got {int8.dtype} "
                             f"{tuple(int8.shape)}")
        with _quiet_ao():
            qweight = torch._make_per_tensor_quantized_tensor(int8.contiguous(), float(entry["scale"]),
                                                              int(entry["zero_point"]))
            module.set_weight_bias(qweight, entry.get("bias"))


# ---------------------------------------------------------------------------- bitsandbytes
def bnb_quantize(model: nn.Module, bits: int, quant_type: str = "nf4",
                 device: str | torch.device | None = None) -> nn.Module:
    """A bitsandbytes 4-bit (``quant_type`` "nf4"/"fp4") or 8-bit copy of a Hugging Face model
    (see :func:`metakd.quantization.quantize`); ``model`` is left as it is. Linear layers that 4-bit
    bitsandbytes cannot hold on every CPU stay in full precision, listed in ``metakd_full_precision``."""
    from ..quantization import quantize

    return quantize(model, bits, quant_type, device=device)


__all__ = ["BITS", "GRANULARITIES", "QuantizedTensor", "bnb_quantize", "check_bits", "check_granularity",
           "conv1d_to_linear", "dequantize", "dynamic_int8", "int8_state", "load_int8_state", "minmax_quantize",
           "pack_codes", "quantizable_weights", "quantize_weights", "unpack_codes"]
