"""The ``compress:`` section of a run file: what ``metakd compress`` does after distillation."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any

from ..config_checks import ConfigError, choice, is_number, yaml_number

PRUNE_METHODS = ("none", "magnitude", "structured")
PRUNE_SCOPES = ("global", "layer")
IMPORTANCE = ("taylor", "magnitude")
QUANT_METHODS = ("none", "minmax", "dynamic_int8", "bnb8", "bnb4")
GRANULARITIES = ("channel", "tensor")


@dataclass
class CompressConfig:
    """distill → prune → (recovery distillation) → quantize → evaluate, every stage saved and scored."""

    prune: str = "none"
    """"magnitude": unstructured, zero the smallest |w| of the blocks' Linear weights (made permanent);
    "structured": remove whole attention heads and FFN neurons (the model really shrinks)."""
    sparsity: float = 0.5
    """magnitude: fraction of the blocks' Linear weights set to zero."""
    prune_scope: str = "global"
    """magnitude: one threshold over all weights ("global") or the same fraction in every weight ("layer")."""
    heads: float = 0.0
    """structured: fraction of attention heads (KV groups for grouped-query attention) removed per block."""
    neurons: float = 0.0
    """structured: fraction of FFN neurons removed per block."""
    importance: str = "taylor"
    """structured: "taylor" (|w · ∂L/∂w| over training batches, L the task loss) or "magnitude" (weight norms)."""
    importance_batches: int = 8
    """structured + taylor: training batches the importance is accumulated over."""
    recovery_steps: int = 0
    """Plain-KD steps from the (meta-updated) teacher after pruning; pruned weights stay zero."""
    recovery_lr: float | None = None
    """Student learning rate of the recovery (default: distill.student_lr)."""
    quantize: str = "none"
    """"minmax": b-bit min-max uniform codes (weights dequantized for evaluation, packed on disk);
    "dynamic_int8": PyTorch dynamic int8 Linear layers (fast CPU inference); "bnb8"/"bnb4": bitsandbytes."""
    bits: int = 8
    """minmax: bits per weight, 2..8."""
    granularity: str = "channel"
    """minmax: one range per output channel ("channel") or per tensor ("tensor")."""
    quantize_embeddings: bool = False
    """minmax: quantize the embedding tables too (per row); in a small student they can hold most
    of the parameters."""
    bnb_quant_type: str = "nf4"
    """bnb4: "nf4" or "fp4"."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        choice("compress.prune", self.prune, PRUNE_METHODS)
        choice("compress.prune_scope", self.prune_scope, PRUNE_SCOPES)
        choice("compress.importance", self.importance, IMPORTANCE)
        choice("compress.quantize", self.quantize, QUANT_METHODS)
        choice("compress.granularity", self.granularity, GRANULARITIES)
        choice("compress.bnb_quant_type", self.bnb_quant_type, ("nf4", "fp4"))
        if not (is_number(self.sparsity) and 0.0 <= self.sparsity < 1.0):
            raise ConfigError(f"compress.sparsity must be in [0, 1), got {self.sparsity!r}")
        for name in ("heads", "neurons"):
            value = getattr(self, name)
            if not (is_number(value) and 0.0 <= value < 1.0):
                raise ConfigError(f"compress.{name} must be a fraction in [0, 1), got {value!r}")
        if self.prune == "structured" and not (self.heads or self.neurons):
            raise ConfigError("compress.prune='structured' removes nothing: set compress.heads and/or compress.neurons "
                              "(fractions in [0, 1))")
        if not isinstance(self.quantize_embeddings, bool):
            raise ConfigError(f"compress.quantize_embeddings must be true or false, got {self.quantize_embeddings!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"compress.bits must be an integer from 2 to 8, got {self.bits!r}")
        if isinstance(self.importance_batches, bool) or not isinstance(self.importance_batches, int) \
                or self.importance_batches < 1:
            raise ConfigError(f"compress.importance_batches must be a positive integer, got {self.importance_batches!r}")
        if isinstance(self.recovery_steps, bool) or not isinstance(self.recovery_steps, int) or self.recovery_steps < 0:
            raise ConfigError(f"compress.recovery_steps must be an integer >= 0, got {self.recovery_steps!r}")
        if self.recovery_lr is not None and not (is_number(self.recovery_lr) and self.recovery_lr > 0):
            raise ConfigError(f"compress.recovery_lr must be a positive number or null, got {self.recovery_lr!r}")

    @property
    def stages(self) -> list[str]:
        """The stages this config runs after "distilled", in order."""
        out = []
        if self.prune != "none":
            out.append("pruned")
            if self.recovery_steps:
                out.append("recovered")
        if self.quantize != "none":
            out.append("quantized")
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CompressConfig":
        """Build from a mapping; unknown keys are an error with a did-you-mean."""
        if not isinstance(values, dict):
            raise ConfigError("'compress' must be a mapping of compression settings")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                raise ConfigError(f"unknown compress key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        return cls(**{k: yaml_number(v) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
