"""Rollouts in checkpoints: a run resumed inside a rollout continues exactly as the uninterrupted run.

GRPOTrainer reuses one generation for `steps_per_generation × num_iterations` micro-steps, held in
`_buffered_inputs` and indexed by the micro-step counter `_step`. Neither is in a Trainer checkpoint, so a run
resumed inside a rollout regenerates with the updated policy and no longer matches the uninterrupted run. We write
both (per process) to `checkpoint-N/rollout_state[_RANK].pt` (`sapo_rollout_state[_RANK].pt` before 0.2; still
read) and restore them on resume (`RolloutResume`, a callback: `on_train_begin` runs after the Trainer has loaded
the checkpoint's optimizer, scheduler and trainer state).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

# The format names live in checkpoints.py, whose completeness rule is keyed by them.
from ..checkpoints import LEGACY_ROLLOUT_STATE_NAME, ROLLOUT_STATE_NAME, resolve_resume_from_checkpoint
from .distributed import any_rank

logger = logging.get_logger(__name__)


def rollout_state_file(
    checkpoint_dir: str, process_index: int, num_processes: int, name: str = ROLLOUT_STATE_NAME
) -> str:
    """`checkpoint_dir/<name>[_RANK].pt`: the rank suffix only when several processes trained."""
    suffix = f"_{process_index}" if num_processes > 1 else ""
    return os.path.join(checkpoint_dir, f"{name}{suffix}.pt")


def checkpoint_dir(trainer, trial=None) -> str:
    """The folder `Trainer._save_checkpoint` writes for the current step."""
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
    legacy = rollout_state_file(checkpoint, acc.process_index, acc.num_processes, LEGACY_ROLLOUT_STATE_NAME)
    if not os.path.isfile(path) and os.path.isfile(legacy):
        path = legacy  # a checkpoint written before the rename
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
    if any_rank(problem is not None, acc):
        logger.warning(
            f"Not restoring the buffered rollouts from {checkpoint} ({path}: {problem or 'fine, but another rank failed'}"
            "): a checkpoint saved inside a rollout then regenerates completions and the run no longer matches an "
            "uninterrupted one."
        )
        return None
    trainer._step = state["step"]
    trainer._buffered_inputs = _to_device(state["buffered_inputs"], acc.device)
    return state


def resolve_checkpoint(trainer, resume_from_checkpoint) -> str | None:
    """The folder `Trainer.train(resume_from_checkpoint=...)` resumes from: None/False -> None, True -> the latest
    complete checkpoint in `output_dir` by this project's rule (`trl_sapo.checkpoints`: completion marker, 0.1
    format, cut-off saves removed; `CheckpointError` when there is none), not transformers' `get_last_checkpoint`
    (highest `checkpoint-*` with or without the marker). A collective with several processes."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        return resolve_resume_from_checkpoint(trainer.args, True)
    return str(resume_from_checkpoint)


class RolloutResume(TrainerCallback):
    """Restores the buffered rollouts of `checkpoint` (set by the trainer's `train()`) at the start of training,
    after the Trainer has loaded the checkpoint's optimizer, scheduler and state; `on_restore(saved_state)` then
    lets other features read what they stored with `save_rollout_state(..., extra=...)`."""

    def __init__(self, trainer, on_restore: Callable[[dict], None] | None = None):
        self.trainer = trainer
        self.on_restore = on_restore
        self.checkpoint: str | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        checkpoint, self.checkpoint = self.checkpoint, None
        if checkpoint is None:
            return
        saved = load_rollout_state(self.trainer, checkpoint)
        if saved is not None and self.on_restore is not None:
            self.on_restore(saved)
