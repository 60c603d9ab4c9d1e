"""metakd: learning-to-teach knowledge distillation for language models.

The teacher is not frozen: a quiz loss on the student, after a differentiable pilot step, is
backpropagated through that step into the teacher's LoRA adapters (or every weight).
"""

from .config import ConfigError, DistillConfig
from .distiller import MetaDistiller, NumericalError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DistillConfig", "MetaDistiller", "NumericalError", "__version__"]
