"""trl-sapo: Soft Adaptive Policy Optimization (SAPO) for TRL."""

from .config import SAPOConfig, SAPOConfigError
from .trainer import SAPOTrainer

__version__ = "0.1.0"
__all__ = ["SAPOConfig", "SAPOConfigError", "SAPOTrainer", "__version__"]
