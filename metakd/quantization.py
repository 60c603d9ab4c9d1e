"""4-bit (NF4/FP4) and 8-bit teachers through bitsandbytes: load one, recognise one, count its bytes,
and refuse what cannot work on one (a full meta-update of quantized weights).

The base weights of a quantized teacher are frozen integer codes; only LoRA adapters on top of them
(peft's bitsandbytes LoRA layers, attached by ``MetaDistiller`` in ``meta_update="lora"``) receive the
meta-gradient. Loading goes through ``from_pretrained(..., quantization_config=...)`` with
``device_map={"": device}``, on a GPU or on the CPU (tested with bitsandbytes 0.50.2 on CPU; an 8-bit
teacher needs bitsandbytes >= 0.48, before which Transformers refuses ``.to()`` on an 8-bit model and
``MetaDistiller`` moves the teacher to its device).

4-bit weights are quantized in blocks of ``BLOCKSIZE_4BIT`` consecutive weights. On a CPU with
AVX512-BF16, bitsandbytes repacks each 4-bit weight for its CPU kernel at the first no-grad forward in
eval mode, which needs ``in_features`` to be a multiple of the blocksize and ``out_features`` a multiple of
``CPU_PACK_ROWS`` (otherwise: a reshape or assertion error deep in bitsandbytes). ``quantize`` and
``load_quantized`` therefore keep such Linear layers in full precision on every machine (so a saved model
loads anywhere), log them, and list them in ``model.metakd_full_precision`` (name -> reason).
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model_errors import ModelError

BITS = (4, 8)
QUANT_TYPES = ("nf4", "fp4")
KINDS = ("classification", "causal_lm")
HEAD_MODULES = ["classifier", "score", "lm_head"]
"""Output heads kept in full precision: they are small and a quantized head would blur the logits."""
INSTALL_HINT = "pip install 'metakd[quant]'"
BLOCKSIZE_4BIT = 64
"""bitsandbytes' 4-bit blocksize (``Params4bit``'s default; Transformers' ``BitsAndBytesConfig`` keeps it)."""
CPU_PACK_ROWS = 32
"""Output rows per group of bitsandbytes' CPU 4-bit weight packing (``_convert_weight_packed_for_cpu``)."""

log = logging.getLogger(__name__)


def require_bitsandbytes() -> Any:
    """The ``bitsandbytes`` module, or a ModelError that says how to install it."""
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ModelError(f"quantized (4/8-bit) teachers need bitsandbytes: {INSTALL_HINT}") from exc
    _log_cast_warning_once()
    return bitsandbytes


def quantization_config(bits: int, quant_type: str = "nf4", compute_dtype: torch.dtype = torch.float32,
                        double_quant: bool = False, skip_modules: list[str] | None = None):
    """A Transformers ``BitsAndBytesConfig`` for ``bits`` = 4 (``quant_type`` "nf4" or "fp4",
    matmuls in ``compute_dtype``) or 8 (LLM.int8()); output heads and the modules named in
    ``skip_modules`` (full dotted names) stay unquantized."""
    if isinstance(bits, bool) or bits not in BITS:
        raise ModelError(f"quantization bits must be 4 or 8, got {bits!r}")
    if bits == 4 and quant_type not in QUANT_TYPES:
        raise ModelError(f"4-bit quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    if not isinstance(compute_dtype, torch.dtype) or not compute_dtype.is_floating_point:
        raise ModelError(f"compute_dtype must be a floating torch dtype, got {compute_dtype!r}")
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    # Transformers matches each entry as a regex from the start of a module's name, or as a suffix
    skip = list(HEAD_MODULES) + [re.escape(name) for name in skip_modules or ()]
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=double_quant,
                              llm_int8_skip_modules=skip)


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a Linear layer or a GPT-2 ``Conv1D`` (both of which Transformers
    replaces with bitsandbytes layers), else None."""
    if type(module) is nn.Linear:
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return tuple(module.weight.shape)  # Conv1D stores [in, out]
    return None


def full_precision_layers(model: nn.Module, bits: int) -> dict[str, str]:
    """The Linear layers of ``model`` that ``quantize``/``load_quantized`` keep in full precision at
    ``bits``, with the reason: at 4 bits those whose ``in_features`` is not a multiple of
    ``BLOCKSIZE_4BIT`` (in particular narrower than one block) or whose ``out_features`` is not a multiple
    of ``CPU_PACK_ROWS`` — shapes bitsandbytes' AVX512-BF16 CPU path cannot pack. Output heads
    (``HEAD_MODULES``, never quantized) are not listed. Nothing at 8 bits."""
    if bits != 4:
        return {}
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        shape = _linear_shape(module)
        if shape is None or name.rsplit(".", 1)[-1] in HEAD_MODULES:
            continue
        fan_in, fan_out = shape
        if fan_in < BLOCKSIZE_4BIT:
            out[name] = f"in_features {fan_in} < 4-bit blocksize {BLOCKSIZE_4BIT}"
        elif fan_in % BLOCKSIZE_4BIT:
            out[name] = f"in_features {fan_in} not a multiple of the 4-bit blocksize {BLOCKSIZE_4BIT}"
        elif fan_out % CPU_PACK_ROWS:
            out[name] = f"out_features {fan_out} not a multiple of {CPU_PACK_ROWS} (bitsandbytes' CPU packing)"
    return out


def _report_full_precision(model: nn.Module, layers: dict[str, str]) -> nn.Module:
    model.metakd_full_precision = dict(layers)
    if layers:
        shown = ", ".join(f"{name} ({why})" for name, why in list(layers.items())[:8])
        more = f" and {len(layers) - 8} more" if len(layers) > 8 else ""
        log.warning("kept %d Linear layer(s) in full precision, which 4-bit bitsandbytes cannot hold on every CPU: "
                    "%s%s", len(layers), shown, more)
    return model


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_quantized(path_or_id: str | Path, bits: int, quant_type: str = "nf4", kind: str = "classification",
                   num_labels: int | None = None, device: str | torch.device | None = None,
                   compute_dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """A Hugging Face model (``AutoModelForSequenceClassification`` or ``AutoModelForCausalLM``) loaded
    from a local directory or hub id with its Linear layers quantized to ``bits`` on ``device`` (default:
    the GPU if there is one, else the CPU). Non-quantized parts (embeddings, norms, heads) are kept in
    ``compute_dtype``. A classifier without a head for ``num_labels`` gets a fresh one (unquantized,
    initialised from ``seed``; the caller's RNG is left as it was).
    Layers listed by ``full_precision_layers`` stay in ``compute_dtype`` too (logged; the returned
    model's ``metakd_full_precision``). The tokenizer is loaded as usual (``AutoTokenizer.from_pretrained``)."""
    if kind not in KINDS:
        raise ModelError(f"kind must be 'classification' or 'causal_lm', got {kind!r}")
    quantization_config(bits, quant_type, compute_dtype)  # bad settings fail before any loading
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from .rng import seeded

    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    auto = AutoModelForSequenceClassification if kind == "classification" else AutoModelForCausalLM
    extra = {"num_labels": num_labels} if kind == "classification" and num_labels is not None else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is expected for an encoder
    try:
        model_config = AutoConfig.from_pretrained(str(path_or_id), **extra)
        with torch.device("meta"):  # the layer shapes, without allocating or reading any weight
            skeleton = auto.from_config(model_config)
        narrow = full_precision_layers(skeleton, bits)
        config = quantization_config(bits, quant_type, compute_dtype, skip_modules=list(narrow))
        with seeded(seed, dev):  # a fresh head is drawn from the global RNG: the same seed, the same head
            model = auto.from_pretrained(str(path_or_id), quantization_config=config, device_map={"": str(dev)},
                                         dtype=compute_dtype, **extra)
    except OSError as exc:
        raise ModelError(f"cannot load model {str(path_or_id)!r}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    if kind == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = 0  # as load_classifier does for a tokenizer without a pad token
    return _report_full_precision(model, narrow)


def quantize(model: nn.Module, bits: int, quant_type: str = "nf4", device: str | torch.device | None = None,
             compute_dtype: torch.dtype = torch.float32) -> nn.Module:
    """A quantized copy of an in-memory Hugging Face model (e.g. a tiny random one): saved to a
    temporary directory and reloaded with ``from_pretrained(quantization_config=...)``, the path a
    checkpoint on disk takes. Layers listed by ``full_precision_layers`` stay in full precision (logged;
    the returned model's ``metakd_full_precision``). ``model`` itself is left as it is."""
    if not hasattr(model, "save_pretrained"):
        raise ModelError(f"{type(model).__name__} is not a Hugging Face model (no save_pretrained)")
    if is_quantized(model):
        raise ModelError("the model is already quantized")
    narrow = full_precision_layers(model, bits)
    config = quantization_config(bits, quant_type, compute_dtype, skip_modules=list(narrow))
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    extra = {"attn_implementation": attn} if attn else {}  # the attention kernel is not saved with the config
    with tempfile.TemporaryDirectory(prefix="metakd-quantize-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        quantized = type(model).from_pretrained(tmp, quantization_config=config, device_map={"": str(dev)},
                                                dtype=compute_dtype, **extra)
    return _report_full_precision(quantized, narrow)


def _bnb_layer_types() -> tuple[type, ...]:
    bnb = sys.modules.get("bitsandbytes")  # a model with bitsandbytes layers has imported it
    if bnb is None:
        return ()
    return tuple(t for t in (getattr(bnb.nn, "Linear4bit", None), getattr(bnb.nn, "Linear8bitLt", None)) if t)


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` (or the model inside a peft wrapper) holds bitsandbytes layers or was
    loaded quantized (``config.quantization_config``, ``is_loaded_in_4bit``/``8bit``)."""
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return True
    layers = _bnb_layer_types()
    for module in model.modules():
        if layers and isinstance(module, layers):
            return True
        if getattr(getattr(module, "config", None), "quantization_config", None) is not None:
            return True
    return False


def check_meta_update(teacher: nn.Module, meta_update: str) -> None:
    """Refuse ``meta_update="full"`` on a quantized teacher: its base weights are integer codes
    that no optimizer can step; the LoRA meta-update trains full-precision adapters on top."""
    if meta_update == "full" and is_quantized(teacher):
        raise ModelError("meta_update='full' cannot train a quantized (4/8-bit) teacher: its base weights are "
                         "frozen integer codes. Use meta_update='lora' (LoRA adapters on the quantized teacher), "
                         "or load the teacher unquantized for a full meta-update.")


def keep_differentiable(model: nn.Module) -> int:
    """Switch off bitsandbytes' AVX512-BF16 CPU repacking of the 4-bit layers in ``model`` (and undo it where
    a no-grad eval-mode forward already repacked a weight). The packed kernel has no backward: after the
    first no-grad forward, gradients through the layer's input are silently dropped, which would cut the
    meta-gradient of every adapter below it. ``MetaDistiller`` calls this on a quantized teacher it
    meta-updates. A weight that was already repacked is unpacked with bitsandbytes' inverse, which keeps
    its block scales rounded to bf16 (logged). Returns the number of layers switched."""
    bnb = sys.modules.get("bitsandbytes")
    linear4bit = getattr(getattr(bnb, "nn", None), "Linear4bit", None)
    if linear4bit is None:
        return 0
    switched, unpacked = 0, 0
    for module in model.modules():
        if not isinstance(module, linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False  # read by Linear4bit.forward before it repacks
        weight = module.weight
        if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
            unpacked += 1
        switched += 1
    if unpacked:
        log.warning("%d 4-bit layer(s) had been repacked for bitsandbytes' CPU kernel by a no-grad forward and were "
                    "unpacked; their block scales stay rounded to bf16 (weights move by up to ~0.4%%). Build "
                    "MetaDistiller before running the quantized teacher to avoid this.", unpacked)
    return switched


def teacher_memory_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as stored, shared storage counted once, plus the
    quantization constants bitsandbytes keeps beside packed weights (4-bit absmax and code tables,
    8-bit row scales)."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            return
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            return
        seen.add(key)
        total += t.numel() * t.element_size()

    def add_quant_state(state: Any) -> None:
        if state is None:
            return
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                add(value)
            elif type(value).__name__ == "QuantState":  # nested (double) quantization
                add_quant_state(value)

    for p in model.parameters():
        add(p)
        add_quant_state(getattr(p, "quant_state", None))
        add(getattr(p, "SCB", None))  # 8-bit row scales before the first forward ...
    for module in model.modules():
        add(getattr(getattr(module, "state", None), "SCB", None))  # ... and after it (Linear8bitLt.state)
    for b in model.buffers():
        add(b)
    return total


class _FirstOnly(logging.Filter):
    """Lets one record of a message through, then drops repeats (bitsandbytes logs its fp16 cast of
    8-bit matmul inputs on every forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _DropKernelHubMessage(logging.Filter):
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" record: logged at
    import on AVX512-BF16 CPUs when the optional ``kernels`` package (a download from the Hugging Face hub)
    is absent; bitsandbytes then uses its own CPU kernel, so there is nothing for the user to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KERNEL_HUB_MESSAGE)


KERNEL_HUB_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _silence_kernel_hub_message() -> None:
    """Install the filter on bitsandbytes' CPU-backend logger (created here if bitsandbytes is not imported
    yet, so it also covers peft's own ``import bitsandbytes``); nothing is imported."""
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropKernelHubMessage) for f in log.filters):
        log.addFilter(_DropKernelHubMessage())


_silence_kernel_hub_message()


def _log_cast_warning_once() -> None:
    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _FirstOnly) for f in log.filters):
        log.addFilter(_FirstOnly())


__all__ = ["BITS", "BLOCKSIZE_4BIT", "CPU_PACK_ROWS", "HEAD_MODULES", "KINDS", "QUANT_TYPES", "check_meta_update",
           "full_precision_layers", "is_quantized", "keep_differentiable", "load_quantized",
           "quantization_config", "quantize", "require_bitsandbytes", "teacher_memory_bytes"]
