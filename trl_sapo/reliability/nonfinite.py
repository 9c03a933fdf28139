"""Non-finite steps: an optimizer step whose loss or gradient norm is NaN/inf on any rank is skipped or raises.

If any micro-batch loss of an accumulation window or the (global) gradient norm is NaN/inf on any rank, all ranks
skip the optimizer and LR-scheduler step (weights and optimizer state untouched), count it in `nonfinite_steps`
(logged metric), or raise `NonFiniteError` with `nonfinite_policy="raise"`. Under DeepSpeed the optimizer step
happens inside `engine.backward`/`engine.step`, so skipping is left to DeepSpeed itself, which skips on an invalid
gradient norm with fp16 (loss scaler), bf16 (`bf16.check_grad_overflow`, default on) and every ZeRO stage >= 1;
plain fp32 without ZeRO applies the step. The watchdog still counts (and, in "raise" mode, stops).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .distributed import any_rank

logger = logging.get_logger(__name__)

NONFINITE_METRIC = "nonfinite_steps"
"""Logged count of skipped non-finite steps (`sapo/nonfinite_steps` in trl-sapo 0.1)."""
_GUARDED = "_reliability_guarded"  # marks an optimizer whose step() is already wrapped


class NonFiniteError(FloatingPointError):
    """A training step produced a NaN/inf loss or gradient norm and `nonfinite_policy="raise"`."""


class NonFiniteWatchdog(TrainerCallback):
    """Skips (or raises on) optimizer steps whose loss or gradient norm is NaN/inf on any rank."""

    def __init__(self, trainer, policy: str = "skip"):
        self.trainer = trainer
        self.policy = policy
        self.count = 0
        self._bad_loss: torch.Tensor | None = None
        self._skip = False
        self._deepspeed = trainer.is_deepspeed_enabled

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Called after each micro-batch backward; accumulates on device (no host sync until the optimizer step)."""
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad

    def before_optimizer_step(self, grad_norm) -> None:
        """Called with the (global) gradient norm right before the optimizer step, on every rank."""
        bad_loss = bool(self._bad_loss) if self._bad_loss is not None else False
        self._bad_loss = None
        norm = grad_norm.item() if isinstance(grad_norm, torch.Tensor) else grad_norm
        bad_norm = norm is not None and not math.isfinite(norm)
        if not any_rank(bad_loss or bad_norm, self.trainer.accelerator):
            return
        step = self.trainer.state.global_step + 1
        what = "loss" if bad_loss else "gradient norm"
        if self.policy == "raise":
            raise NonFiniteError(
                f"Non-finite {what} at optimizer step {step} (grad_norm={norm}); nonfinite_policy='raise'. "
                "Set nonfinite_policy='skip' to skip such steps instead."
            )
        self.count += 1
        self._skip = not self._deepspeed
        action = (
            "DeepSpeed has already skipped or applied it (it skips invalid gradient norms with fp16, bf16 and ZeRO)"
            if self._deepspeed
            else "skipping the optimizer step"
        )
        logger.warning(
            f"Non-finite {what} at optimizer step {step} (grad_norm={norm}): {action} ({self.count} so far, "
            f"logged as {NONFINITE_METRIC})."
        )

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None or self._deepspeed or getattr(optimizer, _GUARDED, False):
            return
        original_step = optimizer.step

        @functools.wraps(original_step)  # keeps the LR scheduler's `_wrapped_by_lr_sched` marker
        def step(*a, **kw):
            if self._skip:
                self._skip = False
                if hasattr(optimizer, "_is_overflow"):
                    optimizer._is_overflow = True  # accelerate: Trainer and scheduler then skip the LR step too
                scaler = getattr(optimizer, "scaler", None)
                if scaler is not None:
                    with contextlib.suppress(AssertionError):  # no inf checks recorded this step
                        scaler.update()  # lower the fp16 loss scale; resets the scaler's per-step state
                return None
            if hasattr(optimizer, "_is_overflow") and getattr(optimizer, "scaler", None) is None:
                optimizer._is_overflow = False
            return original_step(*a, **kw)

        optimizer.step = step
        setattr(optimizer, _GUARDED, True)

    def on_step_end(self, args, state, control, **kwargs):
        # GRPOTrainer.log averages each `_metrics["train"]` list into the logs and clears it: one value, the count.
        self.trainer._metrics["train"][NONFINITE_METRIC] = [float(self.count)]
