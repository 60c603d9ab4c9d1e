"""Compress a distilled student: pruning (unstructured magnitude; structured heads/neurons),
quantization (min-max b-bit, PyTorch dynamic int8, bitsandbytes 8/4-bit), save/load, and the
distill → prune → recover → quantize → evaluate pipeline behind ``metakd compress``."""

from .config import CompressConfig
from .pipeline import compress
from .prune import apply_masks, keep_pruned, magnitude_prune, sparsity
from .quantize import QuantizedTensor, dequantize, dynamic_int8, minmax_quantize, quantize_weights
from .storage import bytes_on_disk, load_compressed, save_compressed
from .structured import apply_plan, prune_structured, structure_of

__all__ = ["CompressConfig", "QuantizedTensor", "apply_masks", "apply_plan", "bytes_on_disk", "compress", "dequantize",
           "dynamic_int8", "keep_pruned", "load_compressed", "magnitude_prune", "minmax_quantize", "prune_structured",
           "quantize_weights", "save_compressed", "sparsity", "structure_of"]
