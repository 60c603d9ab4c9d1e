"""Mixed precision: the ``precision`` setting (fp32, bf16, fp16) as a ``torch.autocast`` context
around the forward passes of every phase, a ``torch.amp.GradScaler`` for fp16, and the dtype names
of ``teacher_dtype``. The weights stay as loaded (fp32 master weights for fp32 models): autocast
runs their matmuls in the low precision; losses are computed in fp32 (:func:`upcast`)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from .config import PRECISIONS, ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_LOW = (torch.float16, torch.bfloat16)


class PrecisionError(ConfigError):
    """A precision this device, torch build or model cannot run."""


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None for fp32: no autocast)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}")
    return None if precision == "fp32" else DTYPES[precision]


def check_precision(precision: str, device: torch.device | str, model_dtype: torch.dtype | None = None) -> None:
    """Raise PrecisionError (one line) when ``precision`` cannot run on ``device`` or with weights of
    ``model_dtype`` (autocast only lowers float32 weights: float64 models would silently stay float64)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return
    device = torch.device(device)
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise PrecisionError(f"precision={precision!r}: torch has no autocast for device {device.type!r}; "
                             "use precision='fp32'")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise PrecisionError(f"precision='bf16': {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                             "use precision='fp16' (with loss scaling) or 'fp32'")
    if model_dtype == torch.float64:
        raise PrecisionError(f"precision={precision!r} autocasts float32 weights, but the models are float64; "
                             "use precision='fp32' or float32 models")


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """``torch.autocast`` to the precision's dtype on ``device`` (a no-op context for fp32)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def make_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler:
    """A ``torch.amp.GradScaler`` enabled for fp16 only (bf16 has fp32's exponent range)."""
    device = torch.device(device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if scaler.is_enabled():
        scaler.scale(torch.zeros((), device=device))  # allocate the scale now: update(new_scale) may come first
    return scaler


def advance_scale(scaler: torch.amp.GradScaler, found_inf: bool) -> None:
    """Move ``scaler``'s loss scale on after a step whose gradients it did not unscale itself (the
    meta-step's backends unscale theirs), exactly as ``scaler.update()`` does after ``scaler.step``:
    an overflow multiplies the scale by the backoff factor and restarts the count of clean steps;
    a clean step counts, and every ``growth_interval`` clean steps in a row multiply the scale by the
    growth factor (kept when that would overflow float32). A no-op when the scaler is disabled."""
    if not scaler.is_enabled():
        return
    state = scaler.state_dict()
    scale, clean = float(state["scale"]), int(state["_growth_tracker"])
    if found_inf:
        scale, clean = scale * state["backoff_factor"], 0
    else:
        clean += 1
        if clean == state["growth_interval"]:
            grown = scale * state["growth_factor"]
            scale = grown if grown <= torch.finfo(torch.float32).max else scale
            clean = 0
    scaler.load_state_dict({**state, "scale": scale, "_growth_tracker": clean})


def upcast(t: Tensor) -> Tensor:
    """``t`` in float32 when it is float16/bfloat16 (losses and softmaxes run in fp32), else ``t``."""
    return t.float() if t.dtype in _LOW else t


def active_dtype(device: torch.device | str, params_dtype: torch.dtype) -> torch.dtype:
    """The dtype forward matmuls run in here: the autocast dtype when autocast is on for ``device``
    and the weights are float32, else the weights' own dtype."""
    kind = torch.device(device).type
    if params_dtype == torch.float32 and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return params_dtype


def parse_dtype(name: str | None, what: str = "teacher_dtype") -> torch.dtype | None:
    """``"fp32"``/``"bf16"``/``"fp16"`` (or None: as saved, float32) as a torch dtype."""
    if name is None:
        return None
    if name not in DTYPES:
        raise PrecisionError(f"{what} must be one of {', '.join(map(repr, PRECISIONS))} or null; got {name!r}")
    return DTYPES[name]


__all__ = ["DTYPES", "PRECISIONS", "PrecisionError", "active_dtype", "advance_scale", "autocast", "autocast_dtype", "check_precision",
           "make_scaler", "parse_dtype", "upcast"]
