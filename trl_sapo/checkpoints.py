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

The latest checkpoint is the highest `checkpoint-N` that is complete: Trainer writes `trainer_state.json` last, so a
folder without it (a save cut off by SIGKILL) is skipped with a warning.

Use it wherever `train()` is called from a config:

    trainer.train(resume_from_checkpoint=resolve_resume_from_checkpoint(training_args))

YAML values `true`/`false` arrive as booleans, command-line ones as strings; both work.
"""

from __future__ import annotations

import os
import re

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
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


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True if `path` holds a finished Trainer checkpoint (`trainer_state.json`, written last)."""
    return os.path.isfile(os.path.join(path, TRAINER_STATE_NAME))


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest complete `checkpoint-N` in `output_dir` (incomplete ones are skipped with a warning), or None.

    Like `transformers.trainer_utils.get_last_checkpoint`, plus the completeness check."""
    for path in reversed(list_checkpoints(output_dir)):
        if is_complete_checkpoint(path):
            return path
        logger.warning(f"Skipping {path}: no {TRAINER_STATE_NAME} (a save that did not finish).")
    return None


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
    `CheckpointError` (a ValueError) when the option cannot be honoured."""
    if resume_from_checkpoint == "from-args":
        resume_from_checkpoint = getattr(args, "resume_from_checkpoint", None)
    option = parse_resume_option(resume_from_checkpoint)
    output_dir = args.output_dir
    if isinstance(option, str):
        if not os.path.isdir(option):
            raise CheckpointError(f"resume_from_checkpoint={option!r}: no such folder.")
        if not is_complete_checkpoint(option):
            raise CheckpointError(
                f"resume_from_checkpoint={option!r} is not a finished checkpoint (no {TRAINER_STATE_NAME}); pass a "
                f"`{PREFIX_CHECKPOINT_DIR}-N` folder, or `true` for the latest one in output_dir."
            )
        return option
    latest = latest_checkpoint(output_dir) if output_dir else None
    if option is True:
        if latest is None:
            raise CheckpointError(
                f"resume_from_checkpoint=true, but output_dir {output_dir!r} holds no finished "
                f"`{PREFIX_CHECKPOINT_DIR}-N` folder to resume from. Check --output_dir, or drop the flag to start "
                "fresh."
            )
        return latest
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
    if latest is not None:  # auto
        if getattr(args, "should_log", True):
            logger.warning(
                f"Resuming from {latest}, the latest checkpoint in output_dir (pass --resume_from_checkpoint false "
                "and a new --output_dir to start a fresh run)."
            )
        return latest
    if output_dir and list_checkpoints(output_dir):  # only unfinished saves: starting fresh would mix with them
        raise CheckpointError(
            f"output_dir {output_dir!r} holds only unfinished checkpoints ({', '.join(list_checkpoints(output_dir))}): "
            "delete them or use a new --output_dir."
        )
    return None
