"""Pre-emption: SIGTERM → every rank finishes its optimizer step, a full checkpoint is saved, training stops.

SIGTERM (SLURM's warning before SIGKILL, Kubernetes' shutdown) sets a flag; at the next optimizer-step boundary
the ranks all-reduce it, save a full checkpoint (rollouts included) and stop; `train()` returns with
`trainer.preempted` True, and the entry point (`trl_sapo.gsm8k.train.main`) exits with `PREEMPTED_EXIT_CODE` at once
so that no post-training code runs inside the grace period. Further SIGTERMs are ignored (torchrun forwards SLURM's
signal a second time); the hard stop is SIGKILL. Under `accelerate launch`/torchrun the agent SIGKILLs its workers
TORCH_ELASTIC_SHUTDOWN_TIMEOUT s (default 30; slurm/train_multinode.sbatch derives it from the signal lead time) after
forwarding a SIGTERM: the step in progress plus the save must fit in it; the agent itself then exits 1 (torch's
elastic agent re-raises the signal as SignalException), whatever its workers' status, so a launcher judges the stop
by the checkpoint (slurm/train_multinode.sbatch reads the run-status file). A SIGTERM that arrives during a periodic
save stops training right after that save. No evaluation runs after the signal and the checkpoint is saved once,
whatever the save/eval strategy (an evaluation would spend the grace period, and with `save_strategy="best"` its
result would veto the save). SIGUSR1 is handled the same way (the SLURM launcher's fallback when
slurmctld is unreachable: srun forwards it). Compared with
transformers' `enable_jit_checkpoint`: no 3 s per-rank timer (ranks could stop at different steps), never saves
between backward and optimizer step, and the checkpoint holds the buffered rollouts.
"""

from __future__ import annotations

import signal
import threading
import warnings

from transformers import TrainerCallback
from transformers.utils import logging

from .distributed import any_rank

logger = logging.get_logger(__name__)

PREEMPTED_EXIT_CODE = 0
"""Exit status of a run stopped by SIGTERM after saving its checkpoint (resume with `resume_from_checkpoint=True`)."""


class PreemptionCallback(TrainerCallback):
    """SIGTERM → finish the current optimizer step on every rank, save a full checkpoint, stop training."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.requested = False
        self.preempted = False
        self.saved_step: int | None = None  # global step of the last save of this train() call
        self._previous: dict = {}
        self._installed = False

    def _handler(self, signum, frame):
        # Repeats are expected and ignored: under SLURM + torchrun a worker gets SIGTERM from SLURM and again from
        # the launcher agent. The hard stop is SIGKILL (SLURM's KillWait, torchrun's shutdown timeout).
        if not self.requested:
            logger.warning("SIGTERM received: saving a checkpoint after the current optimizer step, then exiting.")
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        self.requested = self.preempted = False
        self.saved_step = None
        if threading.current_thread() is not threading.main_thread():
            warnings.warn("save_on_sigterm: train() is not in the main thread, SIGTERM is not handled.", stacklevel=2)
            return
        # SIGUSR1 too: slurm/train_multinode.sbatch's fallback when slurmctld is unreachable (srun forwards it).
        self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGUSR1)}
        self._installed = True

    def on_step_end(self, args, state, control, **kwargs):
        # Every rank reaches this point once per optimizer step: agree here so all ranks save the same step.
        if any_rank(self.requested, self.trainer.accelerator):
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
            # No evaluation inside the grace period; with save_strategy="best" its result would also overwrite
            # should_save (transformers 5.23 Trainer._maybe_log_save_evaluate, trainer.py:2269-2274): no checkpoint.
            control.should_evaluate = False

    def on_save(self, args, state, control, **kwargs):
        self.saved_step = state.global_step
        # A SIGTERM that arrived during a periodic save: stop right after it (that checkpoint is the one to resume
        # from) instead of training one more step and saving again inside the grace period.
        if not self.preempted and any_rank(self.requested, self.trainer.accelerator):
            self.preempted = True
            control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        # Runs after the loop breaks: epoch strategies would evaluate and then save the marked checkpoint again in
        # place (a kill during that rewrite leaves a marked, half-written checkpoint). Saved once is enough.
        if self.preempted:
            control.should_evaluate = False
            control.should_save = self.saved_step != state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self.uninstall()

    def uninstall(self) -> None:
        if self._installed:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            self._installed = False
