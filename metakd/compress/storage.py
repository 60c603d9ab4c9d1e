"""Save a compressed student and load it back to the same numbers.

A compressed directory holds:

- ``model.safetensors``: full-precision tensors, and for the compressed ones
  ``NAME::codes`` (min-max codes bit-packed at b bits), ``NAME::low``/``NAME::high`` (ranges),
  ``NAME::mask`` + ``NAME::values`` (a pruned weight stored sparse: a 1-bit keep mask and the
  kept values, used when it is smaller than the dense tensor) or the int8 weight, scale and
  zero point of a PyTorch dynamic-int8 Linear;
- ``config.json``: the model's Hugging Face config (the architecture before pruning);
- ``compression.json``: how to rebuild it (structured-pruning plan, quantization method, bits,
  granularity, per-tensor layout, tied weights) and what the pipeline measured;
- ``tokenizer/``: the tokenizer, when one is given (not counted in ``bytes_on_disk``).

Loading builds the architecture from the config, applies the pruning plan, loads the tensors and
rebuilds the quantization exactly, so the reloaded model evaluates to the numbers the saved one
did. Nothing is unpickled: safetensors and JSON only. bitsandbytes models are saved with
``save_pretrained`` (their own safetensors format) and loaded with ``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_directory
from ..models import ModelError
from .quantize import QuantizedTensor, dequantize, int8_state, load_int8_state, pack_codes, unpack_codes

FORMAT = "metakd.compressed"
VERSION = 1
META_FILE = "compression.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
SPARSE_MIN_ZEROS = 1 / 16
"""A pruned float weight is stored sparse when at least this fraction is zero (the 1-bit mask
then costs less than the zeros it drops)."""


# ---------------------------------------------------------------------------- bit masks
def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor as a 1-D uint8 tensor of ceil(n / 8) bytes."""
    return torch.from_numpy(np.packbits(mask.reshape(-1).cpu().numpy().astype(np.uint8)))


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    n = int(np.prod(shape)) if shape else 1
    bits = np.unpackbits(packed.cpu().numpy(), count=n)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


# ---------------------------------------------------------------------------- save
def _tied_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that share storage with an earlier one (tied embeddings): safetensors refuses
    shared tensors, and the architecture ties them again when it is built."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    unique, aliases = {}, {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = t
    return unique, aliases


def _store_float(name: str, t: torch.Tensor, prunable: set[str], out: dict[str, torch.Tensor],
                 layout: dict[str, Any]) -> None:
    t = t.detach().cpu()
    if name in prunable and t.is_floating_point() and t.numel():
        keep = t != 0
        if 1 - float(keep.float().mean()) >= SPARSE_MIN_ZEROS:
            out[f"{name}::mask"] = pack_mask(keep)
            out[f"{name}::values"] = t[keep].contiguous()
            layout[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            return
    out[name] = t.contiguous()


def _store_codes(name: str, weight: torch.Tensor, q: QuantizedTensor, out: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Packed codes and ranges of one min-max weight; the zeros of a pruned weight, which the
    codes would not reproduce, are kept by a 1-bit mask (and then only the kept codes are stored)."""
    weight = weight.detach().cpu()
    entry = {"shape": list(q.codes.shape), "axis": q.axis, "bits": q.bits, "dtype": str(q.dtype).removeprefix("torch.")}
    zeros = weight == 0
    codes = q.codes
    if bool(zeros.any()) and bool((dequantize(q)[zeros] != 0).any()):
        keep = ~zeros
        out[f"{name}::mask"] = pack_mask(keep)
        codes = codes[keep]
        entry["masked"] = True
    out[f"{name}::codes"] = pack_codes(codes, q.bits)
    out[f"{name}::low"] = q.low.detach().cpu().float().contiguous()
    out[f"{name}::high"] = q.high.detach().cpu().float().contiguous()
    return entry


def save_compressed(model: nn.Module, directory: str | Path, *, method: str = "none",
                    codes: dict[str, QuantizedTensor] | None = None, plan: dict | None = None,
                    tokenizer: Any = None, info: dict[str, Any] | None = None) -> Path:
    """Save ``model`` as a compressed directory (atomically) and return its path.

    ``method``: "none" (full precision; pruned weights are stored sparse), "minmax" (``codes``:
    the ``QuantizedTensor`` of each weight from ``quantize_weights``; the model holds their
    dequantized values), "dynamic_int8" (a model from ``dynamic_int8``), "bnb8"/"bnb4" (a
    bitsandbytes model; saved with ``save_pretrained``). ``plan``: the structured-pruning plan
    applied to the model. ``info`` is stored in ``compression.json`` as it is.
    """
    from safetensors.torch import save_file

    from .prune import prunable_weights

    if method == "minmax" and not codes:
        raise ModelError("method='minmax' needs the codes returned by quantize_weights")
    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(f"{type(model).__name__} has no Hugging Face config to save")
    meta: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "architecture": type(model).__name__, "method": method,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "plan": {str(k): v for k, v in plan.items()} if plan else None, "info": info or {},
    }
    with atomic_directory(directory) as tmp:
        if method in ("bnb8", "bnb4"):
            if plan:
                raise ModelError("a structurally pruned model cannot be saved in bitsandbytes format; quantize it "
                                 "with 'minmax' or 'dynamic_int8'")
            model.save_pretrained(str(tmp), safe_serialization=True)
        else:
            config.to_json_file(str(tmp / "config.json"))
            state = model.state_dict()
            out: dict[str, torch.Tensor] = {}
            if method == "dynamic_int8":
                modules = int8_state(model)
                meta["int8_modules"] = sorted(modules)
                for mod, parts in modules.items():
                    out.update({f"{mod}::{k}": v.detach().cpu().contiguous() for k, v in parts.items()})
                state = {k: v for k, v in state.items()  # the packed int8 params are not plain tensors
                         if isinstance(v, torch.Tensor) and not any(k.startswith(f"{m}.") for m in modules)}
            state, meta["tied"] = _tied_aliases(state)
            prunable = set(prunable_weights(model)) if method != "dynamic_int8" else set()
            meta["sparse"], meta["quantized"] = {}, {}
            for name, t in state.items():
                if codes and name in codes:
                    meta["quantized"][name] = _store_codes(name, t, codes[name], out)
                else:
                    _store_float(name, t, prunable, out, meta["sparse"])
            save_file(out, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
    return Path(directory)


def bytes_on_disk(directory: str | Path) -> int:
    """Bytes of a compressed directory's model files (weights, config, compression.json); the
    tokenizer, the same for every stage, is left out."""
    root = Path(directory)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and TOKENIZER_DIR not in p.relative_to(root).parts)


# ---------------------------------------------------------------------------- load
def read_compressed_meta(directory: str | Path) -> dict[str, Any]:
    """``compression.json`` of a compressed directory, checked."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise ModelError(f"{directory} is not a compressed model directory (no {META_FILE}); "
                         "save one with metakd.compress.save_compressed or `metakd compress`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); the directory is corrupt") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ModelError(f"{path}: unsupported format {meta.get('format')!r} version {meta.get('version')!r} "
                         f"(this metakd reads {FORMAT!r} version {VERSION})")
    return meta


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ModelError(f"unknown dtype {name!r} in {META_FILE}")
    return dtype


def _restore(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's state dict (full-precision tensors) from the stored tensors."""
    state = {k: v for k, v in tensors.items() if "::" not in k}
    for name, entry in meta.get("sparse", {}).items():
        shape = tuple(entry["shape"])
        keep = unpack_mask(tensors[f"{name}::mask"], shape)
        dense = torch.zeros(shape, dtype=_dtype(entry["dtype"]))
        dense[keep] = tensors[f"{name}::values"]
        state[name] = dense
    for name, entry in meta.get("quantized", {}).items():
        shape, bits = tuple(entry["shape"]), int(entry["bits"])
        keep = unpack_mask(tensors[f"{name}::mask"], shape) if entry.get("masked") else None
        n = int(keep.sum()) if keep is not None else int(np.prod(shape))
        flat = unpack_codes(tensors[f"{name}::codes"], bits, (n,))
        codes = flat.reshape(shape) if keep is None else torch.zeros(shape, dtype=torch.uint8).masked_scatter(keep, flat)
        q = QuantizedTensor(codes=codes, low=tensors[f"{name}::low"], high=tensors[f"{name}::high"], bits=bits,
                            axis=entry["axis"], dtype=_dtype(entry["dtype"]))
        weight = dequantize(q)
        state[name] = weight * keep.to(weight.dtype) if keep is not None else weight
    return state


def _build(directory: Path, meta: dict[str, Any]) -> nn.Module:
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(directory))
    if meta.get("attn_implementation"):
        config._attn_implementation = meta["attn_implementation"]
    cls = getattr(transformers, meta["architecture"], None)
    if cls is None:
        raise ModelError(f"unknown architecture {meta['architecture']!r} in {directory / META_FILE}")
    model = cls(config)
    if meta.get("plan"):
        from .structured import apply_plan

        apply_plan(model, {int(k): v for k, v in meta["plan"].items()})
    return model


def load_compressed(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model saved by ``save_compressed`` in ``directory``, rebuilt exactly; its
    ``compression.json`` is attached as ``model.metakd_compression``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_compressed_meta(directory)
    method = meta["method"]
    if method in ("bnb8", "bnb4"):
        from transformers import AutoModel

        from ..quantization import require_bitsandbytes

        require_bitsandbytes()
        import transformers

        cls = getattr(transformers, meta["architecture"], AutoModel)
        model = cls.from_pretrained(str(directory), device_map={"": str(device)})  # skip list in config.json
        model.metakd_compression = meta
        model.metakd_full_precision = dict(meta.get("info", {}).get("full_precision_layers", {}))
        return model
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {directory / WEIGHTS_FILE}: {exc}") from None
    try:
        state = _restore(tensors, meta)
    except KeyError as exc:
        raise ModelError(f"{directory / WEIGHTS_FILE} lacks tensor {exc}; the directory is corrupt") from None
    model = _build(directory, meta)
    int8 = meta.get("int8_modules") or []
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = set(meta.get("tied", {})) | {f"{m}.{p}" for m in int8 for p in ("weight", "bias")}
    if unexpected or set(missing) - allowed:
        raise ModelError(f"{directory} does not match its architecture: missing {sorted(set(missing) - allowed)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    if method == "dynamic_int8":
        from .quantize import dynamic_int8

        model = dynamic_int8(model)
        load_int8_state(model, {m: {k.partition("::")[2]: v for k, v in tensors.items() if k.startswith(f"{m}::")}
                                for m in int8})
    model.eval()
    model = model.to(device)
    model.metakd_compression = meta
    return model
