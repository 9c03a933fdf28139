"""Which checkpoint a training run resumes from: `resume_from_checkpoint` as cluster users expect it.

`TrainingArguments.resume_from_checkpoint` is a string that `Trainer.train()` takes as a path, so
`--resume_from_checkpoint true` fails with "Can't find a valid checkpoint at true". `resolve_resume_from_checkpoint`
turns the option into what `trainer.train(resume_from_checkpoint=...)` needs:

    resume_from_checkpoint    output_dir has checkpoints              output_dir has none
    ----------------------    ------------------------------------    ------------------------------------
    not given / "auto"        resume from the latest (logged)         start fresh
    true                      resume from the latest                  CheckpointError naming output_dir
    false                     CheckpointError: would mix two runs     start fresh
    a path                    resume from that checkpoint (CheckpointError if it is not a checkpoint folder)

"auto" (the default) is open-r1's `grpo.py` / verl's `resume_mode=auto`: resubmitting the same command, or SLURM
requeueing it, continues where the previous run stopped. Starting fresh in a folder that holds another run's
checkpoints is refused rather than done: the new run would write `checkpoint-N` folders next to the old ones (and
`save_total_limit` would rotate them together), and a later auto-resume could pick the old run's higher step. Pick a
new `output_dir`, or move/delete the old `checkpoint-*` folders.

The latest checkpoint is the highest `checkpoint-N` that is complete. One rule, by the rollout-state file a trl_sapo
save writes first (`reliability/rollouts.py`), one name per format:

    format (rollout state file)        complete when                    unmarked save with it is
    --------------------------------   ------------------------------   ---------------------------------------------
    0.2+: rollout_state[_K].pt         checkpoint_complete.json         cut off (deleted by auto/true)
    0.1:  sapo_rollout_state[_K].pt    the marker, or                   complete: written before the marker existed
                                       trainer_state.json               (resumed, said so in the log); without
                                                                        trainer_state.json: cut off (deleted)

`CheckpointCompletionCallback` (added by `SAPOTrainer` / `ReliabilityMixin`) writes the marker after a barrier, i.e.
once every rank's files are on disk (transformers writes rank 0's `trainer_state.json` before the other ranks are
known to be done). Only saves this rule identifies as trl_sapo's own cut-off saves are deleted (so a first save cut
off by SIGKILL leaves a run that starts fresh), and empty `checkpoint-N` folders (`os.rmdir`: nothing to lose). Any
other unmarked folder (another trainer's checkpoint, a model-only export, a folder still being copied) is skipped
with a warning and left alone: it is used only when named as PATH, and `auto` refuses to start next to it when it is
all there is.

With several processes rank 0 resolves the option and broadcasts its choice; every rank then checks that it sees
that checkpoint (an error names the ranks that do not: node-local or lagging storage), so no two ranks resume from
different checkpoints.

Use it wherever `train()` is called from a config:

    trainer.train(resume_from_checkpoint=resolve_resume_from_checkpoint(training_args))

YAML values `true`/`false` arrive as booleans, command-line ones as strings; both work.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time

from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
COMPLETE_MARKER_NAME = "checkpoint_complete.json"
ROLLOUT_STATE_NAME = "rollout_state"  # file stem of a 0.2+ save's rollout state: complete only with the marker
LEGACY_ROLLOUT_STATE_NAME = "sapo_rollout_state"  # 0.1 stem: complete with trainer_state.json (no marker then)
# rollout_state[_RANK].pt, or its .tmp while torch.save writes it (reliability/rollouts.py:save_rollout_state)
_ROLLOUT_FILE_RE = re.compile(rf"^(?P<stem>{ROLLOUT_STATE_NAME}|{LEGACY_ROLLOUT_STATE_NAME})(?:_\d+)?\.pt(?:\.tmp)?$")
RUN_STATUS_ENV = "SAPO_RUN_STATUS_FILE"  # set by slurm/train_multinode.sbatch: where rank 0 reports progress
RESTART_ENV = "SAPO_RESTART_COUNT"
TRUE_VALUES = ("true", "yes", "1")
FALSE_VALUES = ("false", "no", "0")
AUTO_VALUES = ("auto", "")


RESUME_HELP = (
    "true: resume from the latest checkpoint in output_dir (error if there is none); false: start fresh (refused "
    "when output_dir already holds checkpoint-* folders, so two runs never mix); auto (default): the latest checkpoint "
    "in output_dir if there is one, else a fresh start; or the path of a checkpoint-N folder."
)


def document_resume_option(parser) -> None:
    """Replace transformers' help text of `--resume_from_checkpoint` ("path to a folder ...") in an argparse/TrlParser
    parser with the values `resolve_resume_from_checkpoint` accepts."""
    for action in parser._actions:
        if action.dest == "resume_from_checkpoint":
            action.help = RESUME_HELP
            action.metavar = "{true,false,auto,PATH}"


class CheckpointError(ValueError):
    """`resume_from_checkpoint` cannot be honoured (no checkpoint, not a checkpoint, or would mix two runs)."""


def list_checkpoints(output_dir: str | os.PathLike) -> list[str]:
    """`checkpoint-N` folders in `output_dir`, oldest (lowest N) first; [] when the folder does not exist."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found)]


def checkpoint_kind(path: str | os.PathLike) -> str:
    """What a `checkpoint-N` folder is, by the rule of the module docstring: "complete" (marked), "legacy" (a
    complete 0.1 checkpoint, unmarked), "cut_off" (a trl_sapo save that never finished), "empty", or "foreign"
    (anything else: another trainer's checkpoint, an export, a copy in progress)."""
    if os.path.isfile(os.path.join(path, COMPLETE_MARKER_NAME)):
        return "complete"
    try:
        names = os.listdir(path)
    except OSError:
        return "foreign"
    stems = {m.group("stem") for m in map(_ROLLOUT_FILE_RE.match, names) if m}  # the formats present
    if ROLLOUT_STATE_NAME in stems:
        return "cut_off"
    if LEGACY_ROLLOUT_STATE_NAME in stems:
        return "legacy" if TRAINER_STATE_NAME in names else "cut_off"
    return "foreign" if names else "empty"


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True if `path` is a complete checkpoint: marked (`checkpoint_complete.json`, written after every rank saved),
    or a 0.1 checkpoint written before the marker existed (see the module docstring)."""
    return checkpoint_kind(path) in ("complete", "legacy")


def is_cut_off_save(path: str | os.PathLike) -> bool:
    """True if `path` is a save of this trainer that never finished (its rollout state without what makes its format
    complete); only those are deleted."""
    return checkpoint_kind(path) == "cut_off"


_SKIP_REASONS = {
    "cut_off": "a save that did not finish",
    "empty": "an empty folder",
    "foreign": "not written by a trl_sapo trainer; left alone",
}


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest complete `checkpoint-N` in `output_dir` (others are skipped with a warning), or None. Like
    `transformers.trainer_utils.get_last_checkpoint`, plus the completeness rule."""
    for path in reversed(list_checkpoints(output_dir)):
        kind = checkpoint_kind(path)
        if kind in ("complete", "legacy"):
            return path
        logger.warning(f"Skipping {path}: no {COMPLETE_MARKER_NAME} ({_SKIP_REASONS[kind]}).")
    return None


def remove_cut_off_saves(output_dir: str | os.PathLike, newer_than: str | None = None) -> list[str]:
    """Delete the cut-off saves (`is_cut_off_save`) and empty folders in `output_dir` above `newer_than`'s step (all
    when None), with a warning each; returns their paths. The trainer would otherwise write the same step into a
    folder holding another save's leftovers, and `auto` would refuse to start next to them. Other unmarked folders
    are left alone."""
    floor = int(_CHECKPOINT_RE.match(os.path.basename(newer_than)).group(1)) if newer_than else -1
    removed = []
    for path in list_checkpoints(output_dir):
        step = int(_CHECKPOINT_RE.match(os.path.basename(path)).group(1))
        kind = checkpoint_kind(path) if step > floor else None
        if kind == "cut_off":
            logger.warning(f"Deleting {path}: a save that did not finish (no {COMPLETE_MARKER_NAME}).")
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif kind == "empty":
            with contextlib.suppress(OSError):  # not empty any more (being written): left alone
                os.rmdir(path)
                logger.warning(f"Removed {path}: an empty folder (a save cut off before its first file).")
                removed.append(path)
    return removed


def parse_resume_option(value) -> bool | str | None:
    """`resume_from_checkpoint` as given (CLI string, YAML bool, None) -> None (auto), True, False or a path."""
    if value is None or isinstance(value, bool):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise CheckpointError(
            f"`resume_from_checkpoint` must be true, false, auto or a checkpoint path, got {value!r}."
        )
    text = os.fspath(value).strip()
    if text.lower() in AUTO_VALUES:
        return None
    if text.lower() in TRUE_VALUES:
        return True
    if text.lower() in FALSE_VALUES:
        return False
    return text


def resolve_resume_from_checkpoint(args, resume_from_checkpoint="from-args") -> str | None:
    """The checkpoint to pass to `trainer.train(resume_from_checkpoint=...)` for `args` (TrainingArguments or
    anything with `output_dir` and `resume_from_checkpoint`), or None to start fresh. See the module docstring.

    `resume_from_checkpoint` overrides `args.resume_from_checkpoint` when given (same values). Raises
    `CheckpointError` (a ValueError) when the option cannot be honoured, on every rank alike. With several processes
    (a torch.distributed group is up) this is a collective: call it on every rank."""
    if resume_from_checkpoint == "from-args":
        resume_from_checkpoint = getattr(args, "resume_from_checkpoint", None)
    state = _distributed_state()
    if state is None:
        return _resolve(args, resume_from_checkpoint, log=getattr(args, "should_log", True))
    from accelerate.utils import broadcast_object_list, gather_object

    choice, failure = [None], None
    if state.is_main_process:
        try:
            path = _resolve(args, resume_from_checkpoint, log=True)
            # The file this rank saw: the marker, or trainer_state.json (0.1 checkpoint, or unmarked one named as PATH).
            marker = path and os.path.join(path, COMPLETE_MARKER_NAME)
            proof = path and (marker if os.path.isfile(marker) else os.path.join(path, TRAINER_STATE_NAME))
            choice = [("ok", path, proof)]
        except Exception as exc:  # any error, not only CheckpointError: the other ranks must not wait for rank 0
            failure = exc
            choice = [("error", f"{type(exc).__name__}: {exc}", isinstance(exc, CheckpointError))]
    kind, value, proof = broadcast_object_list(choice, from_process=0)[0]
    if failure is not None:
        raise failure
    if kind == "error":
        if proof:  # a CheckpointError on rank 0
            raise CheckpointError(value.removeprefix(f"{CheckpointError.__name__}: "))
        raise RuntimeError(f"Rank 0 failed while choosing the checkpoint to resume from: {value}")
    problem = None
    if proof is not None and not os.path.isfile(proof):
        mine = latest_checkpoint(args.output_dir) if args.output_dir else None
        problem = f"process {state.process_index} on {socket.gethostname()} does not see {proof} (its latest: {mine})"
    problems = [p for p in gather_object([problem]) if p is not None]
    if problems:
        raise CheckpointError(
            f"Rank 0 resumes from {value}, but {'; '.join(problems)}. Every rank must read the same checkpoint: put "
            "output_dir on storage all nodes share (and wait for it to catch up), or copy the checkpoint to every node."
        )
    return value


def _distributed_state():
    """accelerate's PartialState when a torch.distributed group of more than one process is up, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    from accelerate import PartialState

    return PartialState()


def _resolve(args, resume_from_checkpoint, log: bool) -> str | None:
    """`resolve_resume_from_checkpoint` on this process alone (rank 0's part with several processes)."""
    option = parse_resume_option(resume_from_checkpoint)
    output_dir = args.output_dir
    if isinstance(option, str):
        if not os.path.isdir(option):
            raise CheckpointError(f"resume_from_checkpoint={option!r}: no such folder.")
        if not os.path.isfile(os.path.join(option, TRAINER_STATE_NAME)):
            raise CheckpointError(
                f"resume_from_checkpoint={option!r} is not a finished checkpoint (no {TRAINER_STATE_NAME}); pass a "
                f"`{PREFIX_CHECKPOINT_DIR}-N` folder, or `true` for the latest one in output_dir."
            )
        if not is_complete_checkpoint(option) and log:
            logger.warning(
                f"{option} has no {COMPLETE_MARKER_NAME} (written once every rank's files of a trl_sapo save are on "
                "disk): resuming from it because it was named explicitly."
            )
        return option
    latest = latest_checkpoint(output_dir) if output_dir else None
    if option is False:
        existing = list_checkpoints(output_dir) if output_dir else []
        if existing:
            names = ", ".join(os.path.basename(p) for p in existing[-3:])
            raise CheckpointError(
                f"resume_from_checkpoint=false (start fresh), but output_dir {output_dir!r} already holds "
                f"{len(existing)} checkpoint(s) of an earlier run ({names}). A fresh run there would mix its "
                "checkpoints with the old ones. Use a new --output_dir, or move or delete the old "
                f"`{PREFIX_CHECKPOINT_DIR}-*` folders; drop the flag (or pass `true`) to continue the old run instead."
            )
        return None
    if output_dir:
        remove_cut_off_saves(output_dir, newer_than=latest)
    if option is True:
        if latest is None:
            raise CheckpointError(
                f"resume_from_checkpoint=true, but output_dir {output_dir!r} holds no finished "
                f"`{PREFIX_CHECKPOINT_DIR}-N` folder to resume from. Check --output_dir, or drop the flag to start "
                "fresh."
            )
        _log_legacy(latest, log)
        return latest
    if latest is not None:  # auto
        if log:
            logger.warning(
                f"Resuming from {latest}, the latest checkpoint in output_dir (pass --resume_from_checkpoint false "
                "and a new --output_dir to start a fresh run)."
            )
        _log_legacy(latest, log)
        return latest
    if output_dir and (unmarked := list_checkpoints(output_dir)):  # not ours: never mixed with, never deleted
        raise CheckpointError(
            f"output_dir {output_dir!r} holds checkpoint-N folders without {COMPLETE_MARKER_NAME} "
            f"({', '.join(unmarked)}), not written by a trl_sapo trainer (another trainer's checkpoints, a model "
            "export, or a copy in progress; left alone): resume from one with --resume_from_checkpoint PATH, or use "
            "a new --output_dir."
        )
    return None


def _log_legacy(path: str, log: bool) -> None:
    if log and checkpoint_kind(path) == "legacy":
        logger.warning(
            f"{path} is a trl-sapo 0.1 checkpoint ({LEGACY_ROLLOUT_STATE_NAME}*.pt, written before "
            f"{COMPLETE_MARKER_NAME} existed): complete by its {TRAINER_STATE_NAME}, resuming from it."
        )


# ---- completion marker and progress report ---------------------------------------------------------------------


def report_run_status(event: str, step: int, **fields) -> None:
    """Append `EVENT restart=R step=S [key=value ...]` to the file named by $SAPO_RUN_STATUS_FILE (set by the SLURM
    launcher, which decides from it whether a stopped run made progress); no-op without it. Never raises."""
    path = os.environ.get(RUN_STATUS_ENV)
    if not path:
        return
    extra = "".join(f" {k}={v}" for k, v in fields.items())  # `path=` last: it may contain spaces
    line = f"{event} restart={os.environ.get(RESTART_ENV, '0')} step={step}{extra}\n"
    try:
        with open(path, "a") as f:
            f.write(line)
    except OSError as exc:
        logger.warning(f"Could not report {event!r} to {path}: {exc}")


class CheckpointCompletionCallback(TrainerCallback):
    """After each save: barrier, then every process that saves (`args.should_save`) writes
    `checkpoint-N/checkpoint_complete.json`, and rank 0 reports the checkpoint to $SAPO_RUN_STATUS_FILE.

    `save_total_limit` rotation is moved after the marker: transformers rotates inside `_save_checkpoint`, before the
    other ranks are known to be done, so with `save_total_limit: 1` a save cut off there would leave no complete
    checkpoint at all. During `train()` the limit the Trainer sees is one higher (so the newest complete checkpoint
    survives its rotation); the real limit is applied here once the new checkpoint is marked, and restored at the end.

    Also reports `train_begin`, and `sigterm_stop` / `train_end` at the end of training (`preemption`: the trainer's
    `PreemptionCallback`, whose `preempted` flag tells the two apart)."""

    def __init__(self, preemption=None):
        self.preemption = preemption
        self.save_total_limit = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.save_total_limit is None and args.save_total_limit and args.save_total_limit > 0:
            self.save_total_limit = args.save_total_limit
            args.save_total_limit += 1
        if state.is_world_process_zero:
            report_run_status("train_begin", state.global_step)

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState
        from transformers.trainer_utils import rotate_checkpoints

        path = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        PartialState().wait_for_everyone()  # every rank's files of this checkpoint are written
        if args.should_save and os.path.isdir(path):
            write_complete_marker(path, state.global_step, args.world_size)
            # Same call as Trainer._save_checkpoint (transformers 5.23), with the real limit.
            rotate_checkpoints(
                output_dir=args.output_dir,
                save_total_limit=self.save_total_limit,
                best_model_checkpoint=state.best_model_checkpoint,
                use_mtime=True,
            )
        if state.is_world_process_zero:
            report_run_status("checkpoint", state.global_step, path=path)

    def on_train_end(self, args, state, control, **kwargs):
        if self.save_total_limit is not None:
            args.save_total_limit, self.save_total_limit = self.save_total_limit, None
        if state.is_world_process_zero:
            preempted = self.preemption is not None and self.preemption.preempted
            report_run_status("sigterm_stop" if preempted else "train_end", state.global_step)


def write_complete_marker(path: str | os.PathLike, global_step: int, num_processes: int) -> None:
    """Mark `path` complete (atomically: a reader never sees a half-written marker)."""
    marker = os.path.join(path, COMPLETE_MARKER_NAME)
    info = {"global_step": global_step, "num_processes": num_processes, "host": socket.gethostname(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    tmp = f"{marker}.{socket.gethostname()}.{os.getpid()}.tmp"  # own name: save_on_each_node writers share storage
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, marker)
