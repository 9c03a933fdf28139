"""trl-sapo: Soft Adaptive Policy Optimization (SAPO) for TRL."""

from .config import SAPOConfig, SAPOConfigError
from .reliability import NonFiniteError, RewardFunctionError
from .trainer import SAPOTrainer

__version__ = "0.1.0"
__all__ = ["NonFiniteError", "RewardFunctionError", "SAPOConfig", "SAPOConfigError", "SAPOTrainer", "__version__"]
