"""`checkpoint-N` folders as the save code really leaves them: complete, cut off at each point of the save protocol,
written by trl-sapo 0.1 (before the completion marker), by another trainer, or a model export.

A trl_sapo save (`ReliabilityMixin._save_checkpoint` + `CheckpointCompletionCallback.on_save`) writes, in order:
``rollout_state[_RANK].pt.tmp`` -> ``rollout_state[_RANK].pt`` (atomic rename) -> transformers' files (model,
optimizer, scheduler, RNG, ``trainer_state.json``) -> barrier -> ``checkpoint_complete.json``. A kill between two of
these leaves the files before it; `cut_save` produces exactly that from a real complete save (files are hard-linked,
never edited in place).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from trl_sapo.checkpoints import COMPLETE_MARKER_NAME, LEGACY_ROLLOUT_STATE_NAME, ROLLOUT_STATE_NAME
from trl_sapo.reliability.rollouts import rollout_state_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEGACY_FIXTURE = FIXTURES / "legacy_checkpoint_0.1"
"""checkpoint-1 written by the package at 245d829^ (trl-sapo 0.1, before the marker) with make_legacy.py there,
minus its three large files (listed with all others in MANIFEST.txt)."""
CUT_POINTS = ("rollout_tmp", "rollout", "marker")
"""Where a save was killed: while writing the rollout state, right after it, or before the marker (every Trainer
file written, the barrier not passed)."""


def real_saves(model_path, output_dir) -> Path:
    """`output_dir` of a 2-step tiny SAPO run that saves every step: checkpoint-1 and checkpoint-2, marked."""
    from _reliability_helpers import tiny_trainer

    trainer = tiny_trainer(model_path, output_dir, max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    assert (Path(output_dir) / "checkpoint-2" / COMPLETE_MARKER_NAME).is_file()
    return Path(output_dir)


def copy_checkpoint(source: Path, dest: Path) -> Path:
    """`source` at `dest` (hard links: cheap; the tests remove and rename files, never rewrite them)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, dest, copy_function=os.link)
    return dest


def _rollout_files(checkpoint: Path) -> list[Path]:
    return sorted(
        p for p in checkpoint.iterdir() if p.name.startswith((ROLLOUT_STATE_NAME, LEGACY_ROLLOUT_STATE_NAME))
    )


def as_ranks(checkpoint: Path, num_processes: int) -> Path:
    """The rollout state of a single-process save as an `num_processes`-process save names it (one file per rank,
    named by `rollout_state_file`, the trainer's own naming)."""
    (single,) = _rollout_files(checkpoint)
    if num_processes == 1:
        return checkpoint
    for rank in range(num_processes):
        os.link(single, rollout_state_file(str(checkpoint), rank, num_processes))
    single.unlink()
    return checkpoint


def cut_save(checkpoint: Path, point: str) -> Path:
    """What a kill at `point` (one of `CUT_POINTS`) leaves of the complete save `checkpoint` (in place)."""
    assert point in CUT_POINTS, point
    (checkpoint / COMPLETE_MARKER_NAME).unlink()
    if point == "marker":
        return checkpoint
    rollouts = _rollout_files(checkpoint)
    for path in checkpoint.iterdir():
        if path not in rollouts:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if point == "rollout_tmp":
        for path in rollouts:
            path.rename(path.with_name(path.name + ".tmp"))
    return checkpoint


def foreign(checkpoint: Path) -> Path:
    """Another trainer's checkpoint: what transformers' `Trainer._save_checkpoint` writes, i.e. a trl_sapo save
    without the two files trl_sapo adds (rollout state, marker)."""
    for path in [*_rollout_files(checkpoint), checkpoint / COMPLETE_MARKER_NAME]:
        path.unlink()
    return checkpoint


def to_legacy_format(checkpoint: Path) -> Path:
    """A complete save in trl-sapo 0.1's format: the rollout state under its 0.1 name, no marker. The code of that
    version (245d829^) wrote exactly these files (the same rollout-state dict, version 1; rollout state first, then
    the Trainer's files); tests/test_checkpoints.py checks the names against LEGACY_FIXTURE/MANIFEST.txt, written by
    that code. A generator rather than a stored copy because a resumable checkpoint is ~20 MB (model + optimizer)."""
    (checkpoint / COMPLETE_MARKER_NAME).unlink()
    for path in _rollout_files(checkpoint):
        path.rename(path.with_name(path.name.replace(ROLLOUT_STATE_NAME, LEGACY_ROLLOUT_STATE_NAME, 1)))
    return checkpoint


def legacy_manifest() -> list[str]:
    """File names of the checkpoint trl-sapo 0.1 wrote (MANIFEST.txt: name and size per line)."""
    return sorted(line.split()[0] for line in (LEGACY_FIXTURE / "MANIFEST.txt").read_text().splitlines() if line)
