"""Failure handling for GRPO trainers: reward-function errors, exact mid-rollout resume, SIGTERM, non-finite steps.

`ReliabilityMixin` (trainer) and `ReliabilityConfigMixin` (config) add all four to any GRPOTrainer / GRPOConfig
subclass (trl 1.16); `SAPOTrainer`/`SAPOConfig` use them by default, and `ReliableGRPOTrainer`/`ReliableGRPOConfig`
are plain GRPO with them:

    class MyTrainer(ReliabilityMixin, GRPOTrainer): ...       # the mixin first, so that its hooks wrap GRPO's
    @dataclass
    class MyConfig(ReliabilityConfigMixin, GRPOConfig): ...   # adds save_on_sigterm and nonfinite_policy

With a config that lacks those fields (a plain GRPOConfig) the mixin uses their defaults: `save_on_sigterm=True`,
`nonfinite_policy="skip"`.

Reward functions (`RewardGuard`)
    TRL's contract is kept: a reward function may return `None` (or NaN) for a completion it does not apply to.
    GRPOTrainer turns `None` into NaN, combines the functions with a weighted `nansum`, and a completion for which
    *every* function returned None/NaN is "unscorable": it is left out of its group's mean/std (nan-aware) and its
    advantage is set to 0, with a warning naming the example. What TRL does not handle is made explicit here:
      * a reward function that raises stops the run with `RewardFunctionError` naming the function and the first
        failing example (index in the local batch, truncated prompt and completion; found by re-calling the
        function on single examples, so side effects may run again);
      * ±inf or a non-number (str, list, ...) is rejected the same way: TRL would turn an inf into a NaN advantage
        for the whole group, silently zeroed by `nan_to_num`;
      * with several processes, all ranks agree on the failure right after TRL's reward gather: every rank raises
        the same error, instead of the healthy ranks failing later in (or waiting on) a collective with an
        unrelated message.

Resume (`save_rollout_state` / `load_rollout_state`)
    GRPOTrainer reuses one generation for `steps_per_generation × num_iterations` micro-steps, held in
    `_buffered_inputs` and indexed by the micro-step counter `_step`. Neither is in a Trainer checkpoint, so a run
    resumed inside a rollout regenerates with the updated policy and no longer matches the uninterrupted run. We
    write both (per process) to `checkpoint-N/sapo_rollout_state[_RANK].pt` and restore them on resume.

Pre-emption (`PreemptionCallback`, `SAPOConfig.save_on_sigterm`)
    SIGTERM (SLURM's warning before SIGKILL, Kubernetes' shutdown) sets a flag; at the next optimizer-step boundary
    the ranks all-reduce it, save a full checkpoint (rollouts included) and stop; `train()` then exits the process
    with status 0 so that no post-training code runs inside the grace period. Further SIGTERMs are ignored (torchrun
    forwards SLURM's signal a second time); the hard stop is SIGKILL. Under `accelerate launch`/torchrun the agent
    SIGKILLs its workers TORCH_ELASTIC_SHUTDOWN_TIMEOUT s (default 30; the SLURM launcher derives it from the signal
    lead time) after forwarding a SIGTERM: the step in progress plus the save must fit in it. A SIGTERM during a
    periodic save stops training right after that save. SIGUSR1 is handled the same way (the launcher's fallback).
    Compared with transformers' `enable_jit_checkpoint`: no 3 s per-rank timer (ranks could stop at different steps),
    never saves between backward and optimizer step, and the checkpoint holds the buffered rollouts.

Non-finite steps (`NonFiniteWatchdog`, `SAPOConfig.nonfinite_policy`)
    If any micro-batch loss of an accumulation window or the (global) gradient norm is NaN/inf on any rank, all
    ranks skip the optimizer and LR-scheduler step (weights and optimizer state untouched), count it in
    `sapo/nonfinite_steps`, or raise `NonFiniteError` with `nonfinite_policy="raise"`. Under DeepSpeed the optimizer
    step happens inside `engine.backward`/`engine.step`, so skipping is left to DeepSpeed itself, which skips on an
    invalid gradient norm with fp16 (loss scaler), bf16 (`bf16.check_grad_overflow`, default on) and every ZeRO
    stage >= 1; plain fp32 without ZeRO applies the step. The watchdog still counts (and, in "raise" mode, stops).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import numbers
import os
import signal
import threading
import warnings
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import is_async_callable

from .checkpoints import CheckpointCompletionCallback

logger = logging.get_logger(__name__)

ROLLOUT_STATE_NAME = "sapo_rollout_state"
PREEMPTED_EXIT_CODE = 0
"""Exit status of a run stopped by SIGTERM after saving its checkpoint (resume with `resume_from_checkpoint=True`)."""
_MAX_PROBES = 64  # single-example re-calls when locating the example that made a reward function raise
_SNIPPET = 200


class RewardFunctionError(RuntimeError):
    """A reward function raised or returned a value that is not a finite number or None."""


class NonFiniteError(FloatingPointError):
    """A training step produced a NaN/inf loss or gradient norm and `nonfinite_policy="raise"`."""


def _any_rank(flag: bool, accelerator) -> bool:
    """True on every rank if `flag` is True on any rank (one tiny all-reduce when there are several processes)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


# ---- Reward functions ------------------------------------------------------------------------------------------


def _snippet(value: Any) -> str:
    """Short, one-line text of a prompt or completion (last message content for conversations)."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content", value[-1])
    text = str(value).replace("\n", "\\n")
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"


def _is_valid_reward(x: Any) -> bool:
    if x is None:
        return True
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if not isinstance(x, numbers.Real):
        return False
    return not math.isinf(float(x))  # NaN is TRL's "not applicable", like None


class RewardGuard:
    """Wraps reward functions so that failures stop the run with an error naming the function and the example.

    With several processes set `defer=True`: a failing rank then returns None for the batch (so TRL's gather of the
    rewards still runs on every rank), and `raise_if_failed` — called by every rank right after that gather —
    makes all ranks raise the failing rank's error together.
    """

    def __init__(self, defer: bool = False):
        self.defer = defer
        self.error: str | None = None

    def wrap(self, func, name: str):
        """Return `func` wrapped (sync or async, `__name__` kept); `name` is the name TRL logs it under."""
        if getattr(func, "_sapo_guarded", False):
            return func
        if is_async_callable(func):

            @functools.wraps(func)
            async def wrapped(*args, **kwargs):
                try:
                    out = await func(*args, **kwargs)
                except Exception as exc:
                    index, probe_exc = await self._alocate(func, kwargs)
                    return self._fail(name, kwargs, index, exc, probe_exc)
                return self._check(name, out, kwargs)

        else:

            @functools.wraps(func)
            def wrapped(*args, **kwargs):
                try:
                    out = func(*args, **kwargs)
                except Exception as exc:
                    index, probe_exc = self._locate(func, kwargs)
                    return self._fail(name, kwargs, index, exc, probe_exc)
                return self._check(name, out, kwargs)

        wrapped._sapo_guarded = True
        wrapped.__name__ = getattr(func, "__name__", name)  # callable objects have none: keep TRL's logged name
        return wrapped

    # -- failure reporting --

    @staticmethod
    def _single_example_kwargs(kwargs: dict, i: int, n: int) -> dict:
        single = {k: [v[i]] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in kwargs.items()}
        for k in ("log_extra", "log_metric"):  # don't log twice while probing
            if k in single:
                single[k] = lambda *a, **kw: None
        return single

    def _locate(self, func, kwargs):
        n = len(kwargs.get("completions") or [])
        for i in range(min(n, _MAX_PROBES)):
            try:
                func(**self._single_example_kwargs(kwargs, i, n))
            except Exception as exc:
                return i, exc
        return None, None

    async def _alocate(self, func, kwargs):
        n = len(kwargs.get("completions") or [])
        for i in range(min(n, _MAX_PROBES)):
            try:
                await func(**self._single_example_kwargs(kwargs, i, n))
            except Exception as exc:
                return i, exc
        return None, None

    def _where(self, kwargs, index) -> str:
        prompts, completions = kwargs.get("prompts") or [], kwargs.get("completions") or []
        rank = int(os.environ.get("RANK", "0"))
        where = f"on process {rank}" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        if index is None:
            return f"{where} for a batch of {len(completions)} completions (no single completion reproduces it)"
        return (
            f"{where} at completion {index} of the local batch of {len(completions)}\n"
            f"  prompt:     {_snippet(prompts[index]) if index < len(prompts) else '?'}\n"
            f"  completion: {_snippet(completions[index])}"
        )

    def _fail(self, name, kwargs, index, exc, probe_exc):
        shown = probe_exc if probe_exc is not None else exc
        message = (
            f"Reward function '{name}' raised {type(shown).__name__}: {shown} {self._where(kwargs, index)}\n"
            "Return None for completions the function does not apply to; raise only for real bugs."
        )
        return self._report(message, exc, len(kwargs.get("completions") or []))

    def _check(self, name, out, kwargs):
        try:
            values = list(out)
        except TypeError:
            return out  # TRL raises its own error for a non-list output
        for i, value in enumerate(values):
            if not _is_valid_reward(value):
                message = (
                    f"Reward function '{name}' returned {value!r} {self._where(kwargs, i)}\n"
                    "Rewards must be finite numbers, or None/NaN for 'not applicable' (TRL then ignores the "
                    "function for that completion)."
                )
                return self._report(message, None, len(values))
        return out

    def _report(self, message: str, cause, n: int):
        if self.defer:
            self.error = self.error or message
            return [None] * n
        raise RewardFunctionError(message) from cause

    def raise_if_failed(self, accelerator) -> None:
        """Called by every rank after the rewards are gathered: all ranks raise if any reward function failed."""
        if not self.defer:
            return
        if not _any_rank(self.error is not None, accelerator):
            return
        from accelerate.utils import gather_object

        errors = [e for e in gather_object([self.error]) if e is not None]
        raise RewardFunctionError(errors[0] if self.error is None else self.error)


def guard_reward_funcs(trainer) -> RewardGuard:
    """Wrap `trainer.reward_funcs`' callables in place (reward models are left alone); return the guard."""
    guard = RewardGuard(defer=trainer.accelerator.num_processes > 1)
    trainer.reward_funcs = [
        f if isinstance(f, torch.nn.Module) or not callable(f) else guard.wrap(f, name)
        for f, name in zip(trainer.reward_funcs, trainer.reward_func_names)
    ]
    return guard


# ---- Rollout state in checkpoints -------------------------------------------------------------------------------


def rollout_state_file(checkpoint_dir: str, process_index: int, num_processes: int) -> str:
    suffix = f"_{process_index}" if num_processes > 1 else ""
    return os.path.join(checkpoint_dir, f"{ROLLOUT_STATE_NAME}{suffix}.pt")


def checkpoint_dir(trainer, trial=None) -> str:
    return os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def save_rollout_state(trainer, output_dir: str, extra: dict | None = None) -> None:
    """Write this process's buffered rollouts and micro-step counter next to the Trainer checkpoint files."""
    os.makedirs(output_dir, exist_ok=True)
    state = {
        "version": 1,
        "global_step": trainer.state.global_step,
        "num_processes": trainer.accelerator.num_processes,
        "step": trainer._step,
        "buffered_inputs": _to_device(trainer._buffered_inputs, "cpu"),
        **(extra or {}),
    }
    path = rollout_state_file(output_dir, trainer.accelerator.process_index, trainer.accelerator.num_processes)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)  # atomic: a SIGKILL mid-write leaves no truncated file behind


def load_rollout_state(trainer, checkpoint: str) -> dict | None:
    """Restore `_step` and `_buffered_inputs` saved by `save_rollout_state`; returns the state dict or None.

    All processes restore or none does (a rank-dependent micro-step counter would desynchronise generation and
    hang the next collective); without the state, training resumes as GRPOTrainer does: regenerating.
    """
    acc = trainer.accelerator
    path = rollout_state_file(checkpoint, acc.process_index, acc.num_processes)
    state, problem = None, None
    if not os.path.isfile(path):
        problem = "not found (checkpoint written by another trainer, or with another number of processes)"
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable: same outcome as a missing file
            problem = f"unreadable ({type(exc).__name__}: {exc})"
        else:
            if state["global_step"] != trainer.state.global_step or state["num_processes"] != acc.num_processes:
                problem = (
                    f"saved at step {state['global_step']} with {state['num_processes']} processes, resuming at step "
                    f"{trainer.state.global_step} with {acc.num_processes}"
                )
    if _any_rank(problem is not None, acc):
        logger.warning(
            f"Not restoring the buffered rollouts from {checkpoint} ({path}: {problem or 'fine, but another rank failed'}"
            "): a checkpoint saved inside a rollout then regenerates completions and the run no longer matches an "
            "uninterrupted one."
        )
        return None
    trainer._step = state["step"]
    trainer._buffered_inputs = _to_device(state["buffered_inputs"], acc.device)
    return state


# ---- Pre-emption ------------------------------------------------------------------------------------------------


class PreemptionCallback(TrainerCallback):
    """SIGTERM → finish the current optimizer step on every rank, save a full checkpoint, stop training."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.requested = False
        self.preempted = False
        self._previous = {}
        self._installed = False

    def _handler(self, signum, frame):
        # Repeats are expected and ignored: under SLURM + torchrun a worker gets SIGTERM from SLURM and again from
        # the launcher agent. The hard stop is SIGKILL (SLURM's KillWait, torchrun's 30 s shutdown timeout).
        if not self.requested:
            logger.warning("SIGTERM received: saving a checkpoint after the current optimizer step, then exiting.")
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        self.requested = self.preempted = False
        if threading.current_thread() is not threading.main_thread():
            warnings.warn("save_on_sigterm: train() is not in the main thread, SIGTERM is not handled.", stacklevel=2)
            return
        # SIGUSR1 too: slurm/train_multinode.sbatch's fallback when slurmctld is unreachable (srun forwards it).
        self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGUSR1)}
        self._installed = True

    def on_step_end(self, args, state, control, **kwargs):
        # Every rank reaches this point once per optimizer step: agree here so all ranks save the same step.
        if _any_rank(self.requested, self.trainer.accelerator):
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        # A SIGTERM that arrived during a periodic save: stop right after it (that checkpoint is the one to resume
        # from) instead of training one more step and saving again inside the grace period.
        if not self.preempted and _any_rank(self.requested, self.trainer.accelerator):
            self.preempted = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.uninstall()

    def uninstall(self) -> None:
        if self._installed:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            self._installed = False


# ---- Non-finite steps -------------------------------------------------------------------------------------------


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
        if not _any_rank(bad_loss or bad_norm, self.trainer.accelerator):
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
            "logged as sapo/nonfinite_steps)."
        )

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None or self._deepspeed or getattr(optimizer, "_sapo_guarded", False):
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
        optimizer._sapo_guarded = True

    def add_to_logs(self, logs: dict) -> dict:
        if any(k.startswith("eval_") for k in logs):
            return logs
        return {**logs, "sapo/nonfinite_steps": float(self.count)}


# ---- Mixins: the hooks that wire the above into a GRPOTrainer ----------------------------------------------------


@dataclasses.dataclass
class ReliabilityConfigMixin:
    """Config fields of `ReliabilityMixin`, for a GRPOConfig subclass: ``class C(ReliabilityConfigMixin, GRPOConfig)``.

    Parameters:
        save_on_sigterm (`bool`, *optional*, defaults to `True`):
            On SIGTERM (SLURM's warning before SIGKILL), finish the current optimizer step on every rank, save a
            checkpoint that includes the buffered rollouts, and exit with status 0; resume with
            `resume_from_checkpoint=True`. Replaces transformers' `enable_jit_checkpoint`. Give the job a grace
            period of at least one step plus one save (`#SBATCH --signal=TERM@<seconds>`).
        nonfinite_policy (`str`, *optional*, defaults to `"skip"`):
            What to do when a step's loss or gradient norm is NaN/inf on any rank: `"skip"` leaves weights,
            optimizer and LR schedule untouched and counts it in `sapo/nonfinite_steps`; `"raise"` stops with
            `NonFiniteError`. Under DeepSpeed, skipping is done by DeepSpeed itself (fp16, bf16, ZeRO >= 1).
    """

    config_error = ValueError  # not a field (no annotation): the error class invalid values raise

    save_on_sigterm: bool = dataclasses.field(
        default=True,
        metadata={
            "help": "On SIGTERM, save a checkpoint (with the buffered rollouts) after the current optimizer step on "
            "all ranks and exit with status 0. Replaces transformers' enable_jit_checkpoint."
        },
    )
    nonfinite_policy: str = dataclasses.field(
        default="skip",
        metadata={
            "help": "Steps with a NaN/inf loss or gradient norm: 'skip' (no optimizer/LR update, counted in "
            "sapo/nonfinite_steps) or 'raise' (stop with NonFiniteError).",
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
    GRPOTrainer subclass: ``class T(ReliabilityMixin, GRPOTrainer)``. Each hook is a thin adapter around the classes
    and functions above; the config fields are `ReliabilityConfigMixin`'s (their defaults when the config has none).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reward_guard = guard_reward_funcs(self)
        self._watchdog = NonFiniteWatchdog(self, getattr(self.args, "nonfinite_policy", "skip"))
        self._preemption = PreemptionCallback(self) if getattr(self.args, "save_on_sigterm", True) else None
        for callback in (self._watchdog, self._preemption):
            if callback is not None:
                self.add_callback(callback)
        self.add_callback(CheckpointCompletionCallback(self._preemption))  # trl_sapo/checkpoints.py (issue 19)

    def train(self, *args, **kwargs):
        try:
            output = super().train(*args, **kwargs)
        finally:
            if self._preemption is not None:
                self._preemption.uninstall()  # also when train() raises: restore the previous SIGTERM handler
        if self._preemption is not None and self._preemption.preempted:
            logger.warning(
                f"Stopped by SIGTERM after saving checkpoint-{self.state.global_step}; exiting with status "
                f"{PREEMPTED_EXIT_CODE}. Resume with resume_from_checkpoint=True."
            )
            raise SystemExit(PREEMPTED_EXIT_CODE)
        return output

    def training_step(self, model, inputs, num_items_in_batch):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._watchdog.observe_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._watchdog.before_optimizer_step(grad_norm)
        return grad_norm

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._reward_guard.raise_if_failed(self.accelerator)  # all ranks together, after TRL's gather
        return rewards_per_func

    def _save_checkpoint(self, model, trial):
        if not self.args.save_only_model:  # written first: a checkpoint with trainer_state.json is complete
            extra = {"nonfinite_steps": self._watchdog.count}
            save_rollout_state(self, checkpoint_dir(self, trial), extra)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and (state := load_rollout_state(self, checkpoint)) is not None:
            self._watchdog.count = state.get("nonfinite_steps", 0)

    def log(self, logs, start_time=None):
        super().log(self._watchdog.add_to_logs(logs) if self.model.training else logs, start_time)


@dataclasses.dataclass
class ReliableGRPOConfig(ReliabilityConfigMixin, GRPOConfig):
    """`trl.GRPOConfig` plus `ReliabilityConfigMixin`'s fields (`save_on_sigterm`, `nonfinite_policy`)."""


class ReliableGRPOTrainer(ReliabilityMixin, GRPOTrainer):
    """`trl.GRPOTrainer` (its own loss, unchanged) with `ReliabilityMixin`'s failure handling."""
