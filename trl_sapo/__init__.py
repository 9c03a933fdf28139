"""trl-sapo: Soft Adaptive Policy Optimization (SAPO) for TRL."""

from .config import SAPOConfig, SAPOConfigError
from .reliability import (
    NonFiniteError,
    ReliabilityConfigMixin,
    ReliabilityMixin,
    ReliableGRPOConfig,
    ReliableGRPOTrainer,
    RewardFunctionError,
)
from .trainer import SAPOTrainer

__version__ = "0.1.0"
__all__ = [
    "NonFiniteError",
    "ReliabilityConfigMixin",
    "ReliabilityMixin",
    "ReliableGRPOConfig",
    "ReliableGRPOTrainer",
    "RewardFunctionError",
    "SAPOConfig",
    "SAPOConfigError",
    "SAPOTrainer",
    "__version__",
]
