"""trl-sapo: Soft Adaptive Policy Optimization (SAPO) for TRL.

The names below are imported on first use, so that `trl_sapo.tools.offline` (and other light modules) can be
imported before TRL/transformers/huggingface_hub, which read their offline settings at import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
_EXPORTS = {
    "AsyncSAPOConfig": "async_sapo",
    "AsyncSAPOTrainer": "async_sapo",
    "NonFiniteError": "reliability",
    "ReliabilityConfigMixin": "reliability",
    "ReliabilityMixin": "reliability",
    "ReliableGRPOConfig": "reliability",
    "ReliableGRPOTrainer": "reliability",
    "RewardFunctionError": "reliability",
    "SAPOConfig": "config",
    "SAPOConfigError": "config",
    "SAPOTrainer": "trainer",
}
__all__ = [
    "AsyncSAPOConfig",
    "AsyncSAPOTrainer",
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

if TYPE_CHECKING:
    from .async_sapo import AsyncSAPOConfig, AsyncSAPOTrainer
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


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
