"""Failure handling for GRPO trainers, one module per concern, wired into any GRPOTrainer by `mixin`:

    rewards.py      a reward function that raises or returns ±inf / a non-number stops the run with
                    `RewardFunctionError` naming the function and the example, on every rank together
    rollouts.py     checkpoints hold GRPO's buffered rollouts and micro-step counter: exact mid-rollout resume
    preemption.py   SIGTERM: every rank finishes its optimizer step, a checkpoint is saved, training stops
                    (`trainer.preempted`; the entry point exits with `PREEMPTED_EXIT_CODE`)
    nonfinite.py    a NaN/inf loss or gradient norm on any rank: the step is skipped (counted) or raises
    mixin.py        `ReliabilityMixin` / `ReliabilityConfigMixin` (any GRPOTrainer / GRPOConfig subclass, trl 1.16),
                    `ReliableGRPOTrainer` / `ReliableGRPOConfig` (plain GRPO with all four)

`SAPOTrainer`/`SAPOConfig` use the mixins by default. Each module's docstring says what it does and why.
"""

from .mixin import (
    PRIVATE_OVERRIDES,
    ReliabilityConfigMixin,
    ReliabilityMixin,
    ReliableGRPOConfig,
    ReliableGRPOTrainer,
)
from .nonfinite import NONFINITE_METRIC, NonFiniteError, NonFiniteWatchdog
from .preemption import PREEMPTED_EXIT_CODE, PreemptionCallback
from .rewards import RewardFunctionError, RewardGuard, guard_reward_funcs
from .rollouts import (
    LEGACY_ROLLOUT_STATE_NAME,
    ROLLOUT_STATE_NAME,
    RolloutResume,
    load_rollout_state,
    rollout_state_file,
    save_rollout_state,
)

__all__ = [
    "LEGACY_ROLLOUT_STATE_NAME",
    "NONFINITE_METRIC",
    "PREEMPTED_EXIT_CODE",
    "PRIVATE_OVERRIDES",
    "ROLLOUT_STATE_NAME",
    "NonFiniteError",
    "NonFiniteWatchdog",
    "PreemptionCallback",
    "ReliabilityConfigMixin",
    "ReliabilityMixin",
    "ReliableGRPOConfig",
    "ReliableGRPOTrainer",
    "RewardFunctionError",
    "RewardGuard",
    "RolloutResume",
    "guard_reward_funcs",
    "load_rollout_state",
    "rollout_state_file",
    "save_rollout_state",
]
