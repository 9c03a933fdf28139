"""`ReliabilityMixin` / `ReliabilityConfigMixin`: the hooks that wire the four features into any GRPOTrainer.

    class MyTrainer(ReliabilityMixin, GRPOTrainer): ...       # the mixin first, so that its hooks wrap GRPO's
    @dataclass
    class MyConfig(ReliabilityConfigMixin, GRPOConfig): ...   # adds save_on_sigterm and nonfinite_policy

With a config that lacks those fields (a plain GRPOConfig) the mixin uses their defaults: `save_on_sigterm=True`,
`nonfinite_policy="skip"`. The features live in their own modules (`rewards`, `rollouts`, `preemption`,
`nonfinite`) and reach the trainer through callbacks where transformers has one; `PRIVATE_OVERRIDES` lists the
private Trainer/GRPOTrainer methods overridden because no public hook exists, and why
(tests/test_private_overrides.py pins their names and signatures against the installed transformers/TRL).
"""

from __future__ import annotations

import dataclasses
import warnings

from transformers.utils import logging
from trl import GRPOConfig, GRPOTrainer

from ..checkpoints import CheckpointCompletionCallback
from .nonfinite import NonFiniteWatchdog
from .preemption import PREEMPTED_EXIT_CODE, PreemptionCallback
from .rewards import guard_reward_funcs
from .rollouts import RolloutResume, checkpoint_dir, resolve_checkpoint, save_rollout_state

logger = logging.get_logger(__name__)

PRIVATE_OVERRIDES = {
    "_get_grad_norm": (
        "transformers.Trainer",
        "(self, model, grad_norm=None)",
        "the global gradient norm of the step is a local of Trainer's loop; callbacks (on_pre_optimizer_step) do "
        "not receive it, and the decision to skip must come before optimizer.step()",
    ),
    "_calculate_rewards": (
        "trl.GRPOTrainer",
        "(self, inputs, prompts, completions, completion_ids_list)",
        "the only point after TRL's gather of the rewards and before the advantages, where every rank can raise "
        "a reward function's error together; there is no callback around reward computation",
    ),
    "_save_checkpoint": (
        "transformers.Trainer",
        "(self, model, trial)",
        "the rollout state must be in the checkpoint before transformers writes trainer_state.json (what "
        "get_last_checkpoint and plain `resume_from_checkpoint=True` take as finished); on_save runs after it, so "
        "a kill in between would leave a checkpoint that looks finished to them but lacks its rollouts",
    ),
}
"""Private methods `ReliabilityMixin` overrides: name -> (defining class, signature, why no public hook serves)."""


@dataclasses.dataclass
class ReliabilityConfigMixin:
    """Config fields of `ReliabilityMixin`, for a GRPOConfig subclass: ``class C(ReliabilityConfigMixin, GRPOConfig)``.

    Parameters:
        save_on_sigterm (`bool`, *optional*, defaults to `True`):
            On SIGTERM (SLURM's warning before SIGKILL), finish the current optimizer step on every rank, save a
            checkpoint that includes the buffered rollouts, and stop (`trainer.preempted` is then True; the entry point
            `trl-sapo-gsm8k` exits with status 0); resume with `resume_from_checkpoint=True`. Replaces transformers' `enable_jit_checkpoint`. Give the job a grace
            period of at least one step plus one save (`#SBATCH --signal=TERM@<seconds>`).
        nonfinite_policy (`str`, *optional*, defaults to `"skip"`):
            What to do when a step's loss or gradient norm is NaN/inf on any rank: `"skip"` leaves weights,
            optimizer and LR schedule untouched and counts it in `nonfinite_steps`; `"raise"` stops with
            `NonFiniteError`. Under DeepSpeed, skipping is done by DeepSpeed itself (fp16, bf16, ZeRO >= 1).
    """

    config_error = ValueError  # not a field (no annotation): the error class invalid values raise

    save_on_sigterm: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "On SIGTERM, save a checkpoint (with the buffered rollouts) after the current optimizer step on "
            "all ranks and stop (trl-sapo-gsm8k then exits with status 0). Replaces transformers' enable_jit_checkpoint."
        },
    )
    nonfinite_policy: str = dataclasses.field(
        default="skip",
        metadata={
            "help": "Steps with a NaN/inf loss or gradient norm: 'skip' (no optimizer/LR update, counted in "
            "nonfinite_steps) or 'raise' (stop with NonFiniteError).",
            "choices": ["skip", "raise"],
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self._validate_reliability()

    def _validate_reliability(self) -> None:
        if self.nonfinite_policy not in ("skip", "raise"):
            raise self.config_error(f"`nonfinite_policy` must be 'skip' or 'raise', got {self.nonfinite_policy!r}.")
        if not isinstance(self.save_on_sigterm, bool):
            raise self.config_error(f"`save_on_sigterm` must be true or false, got {self.save_on_sigterm!r}.")
        if self.save_on_sigterm and self.enable_jit_checkpoint:
            warnings.warn(
                "enable_jit_checkpoint=True is replaced by save_on_sigterm=True (the trainer's SIGTERM handler saves "
                "after a completed optimizer step on all ranks, with the buffered rollouts). Set "
                "save_on_sigterm=False to use transformers' handler instead.",
                UserWarning,
                stacklevel=4,
            )
            self.enable_jit_checkpoint = False


class ReliabilityMixin:
    """Reward-function errors, rollouts in checkpoints, SIGTERM checkpointing and the non-finite watchdog for a
    GRPOTrainer subclass: ``class T(ReliabilityMixin, GRPOTrainer)``. Each hook is a thin adapter around the feature
    modules; the config fields are `ReliabilityConfigMixin`'s (their defaults when the config has none).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reward_guard = guard_reward_funcs(self)
        self._watchdog = NonFiniteWatchdog(self, getattr(self.args, "nonfinite_policy", "skip"))
        self._preemption = PreemptionCallback(self) if getattr(self.args, "save_on_sigterm", True) else None
        self._rollout_resume = RolloutResume(self, on_restore=self._restore_extra_state)
        for callback in (self._watchdog, self._preemption, self._rollout_resume):
            if callback is not None:
                self.add_callback(callback)
        # completion marker after a barrier on every rank, rotation after it, progress for the SLURM launcher
        self.add_callback(CheckpointCompletionCallback(self._preemption))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # True resolved here, by the completion marker (transformers' own resolution takes the highest checkpoint-*)
        checkpoint = resolve_checkpoint(self, resume_from_checkpoint)
        self._rollout_resume.checkpoint = checkpoint
        try:
            output = super().train(checkpoint or resume_from_checkpoint, *args, **kwargs)
        finally:
            if self._preemption is not None:
                self._preemption.uninstall()  # also when train() raises: restore the previous SIGTERM handler
        if self.preempted and self._preemption.saved_step == self.state.global_step:
            logger.warning(
                f"Stopped by SIGTERM after saving checkpoint-{self.state.global_step}. Resume with "
                f"resume_from_checkpoint=True; exit now (status {PREEMPTED_EXIT_CODE}) rather than save again."
            )
        elif self.preempted:  # not expected (the callback asks for the save); said plainly should it happen
            logger.error(
                f"Stopped by SIGTERM at step {self.state.global_step} without saving a checkpoint there (last save: "
                f"step {self._preemption.saved_step}); a resumed run repeats the steps since."
            )
        return output

    @property
    def preempted(self) -> bool:
        """True after `train()` stopped early because of SIGTERM (its checkpoint is saved). Exit the process then,
        with `PREEMPTED_EXIT_CODE`, before any further work: the scheduler's grace period is short."""
        return self._preemption is not None and self._preemption.preempted

    def training_step(self, model, inputs, num_items_in_batch):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._watchdog.observe_loss(loss)
        return loss

    # Private overrides: see PRIVATE_OVERRIDES for why each has no public hook.

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._watchdog.before_optimizer_step(grad_norm)
        return grad_norm

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._reward_guard.raise_if_failed(self.accelerator)  # all ranks together, after TRL's gather
        return rewards_per_func

    def _save_checkpoint(self, model, trial):
        if not self.args.save_only_model:  # before the Trainer's files: a finished checkpoint always has its rollouts
            extra = {"nonfinite_steps": self._watchdog.count}
            save_rollout_state(self, checkpoint_dir(self, trial), extra)
        super()._save_checkpoint(model, trial)

    def _restore_extra_state(self, saved: dict) -> None:
        self._watchdog.count = saved.get("nonfinite_steps", 0)


@dataclasses.dataclass
class ReliableGRPOConfig(ReliabilityConfigMixin, GRPOConfig):
    """`trl.GRPOConfig` plus `ReliabilityConfigMixin`'s fields (`save_on_sigterm`, `nonfinite_policy`)."""


class ReliableGRPOTrainer(ReliabilityMixin, GRPOTrainer):
    """`trl.GRPOTrainer` (its own loss, unchanged) with `ReliabilityMixin`'s failure handling."""
