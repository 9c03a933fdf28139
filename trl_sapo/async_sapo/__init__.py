"""SAPO for TRL's asynchronous GRPO (`trl.experimental.async_grpo`): config, trainer, transformers rollout worker.

Imported only on first use of `trl_sapo.AsyncSAPOTrainer` / `trl_sapo.AsyncSAPOConfig`, so `import trl_sapo`
stays as light as before for synchronous users.
"""

from .config import ASYNC_LOSS_TYPES, AsyncSAPOConfig
from .cpu import enable_cpu_support, varlen_attention
from .trainer import AsyncSAPOTrainer
from .worker import LocalWeightTransfer, RolloutWorkerError, TransformersRolloutWorker

__all__ = [
    "ASYNC_LOSS_TYPES",
    "AsyncSAPOConfig",
    "AsyncSAPOTrainer",
    "LocalWeightTransfer",
    "RolloutWorkerError",
    "TransformersRolloutWorker",
    "enable_cpu_support",
    "varlen_attention",
]
