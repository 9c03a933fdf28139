"""`resume_from_checkpoint` = true / false / auto (default) / a path, from the CLI and from YAML
(trl_sapo/checkpoints.py); the end-to-end auto-resume through scripts/gsm8k_sapo.py is in test_slurm.py's requeue
test and test_script.py."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest
from _checkpoint_fixtures import (
    CUT_POINTS,
    LEGACY_FIXTURE,
    as_ranks,
    copy_checkpoint,
    cut_save,
    foreign,
    legacy_manifest,
    real_saves,
    to_legacy_format,
)
from trl import TrlParser

from trl_sapo import SAPOConfig
from trl_sapo.checkpoints import (
    COMPLETE_MARKER_NAME,
    CheckpointError,
    checkpoint_kind,
    latest_checkpoint,
    parse_resume_option,
    resolve_resume_from_checkpoint,
    write_complete_marker,
)

_SAVES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _real_saves(tiny_model_path, tmp_path_factory):
    """One real 2-step save every test's `make_checkpoint` copies from (the files the trainer writes)."""
    _SAVES["run"] = real_saves(tiny_model_path, tmp_path_factory.mktemp("real-saves") / "run")
    _SAVES["model"] = tiny_model_path  # written by save_pretrained: a model export
    yield
    _SAVES.clear()


def make_checkpoint(output_dir, step, complete=True, kind="sapo"):
    """`checkpoint-N` made from a real save: complete = as saved (marked); else a save cut off before the marker
    (kind "sapo": every Trainer file written, "early": only the rollout state, "tmp": killed while writing it);
    kind "foreign": another trainer's checkpoint (trainer_state.json, no rollout state, no marker)."""
    path = copy_checkpoint(_SAVES["run"] / "checkpoint-2", output_dir / f"checkpoint-{step}")
    if kind == "foreign":
        return foreign(path)
    if complete:
        return path
    return cut_save(path, {"sapo": "marker", "early": "rollout", "tmp": "rollout_tmp"}[kind])


def args(output_dir, resume=None):
    return SimpleNamespace(output_dir=str(output_dir), resume_from_checkpoint=resume)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("auto", None), ("", None), (True, True), ("true", True), ("True", True), ("yes", True),
     (False, False), ("false", False), ("FALSE", False), ("no", False), ("out/checkpoint-3", "out/checkpoint-3")],
)  # fmt: skip
def test_parse_resume_option(value, expected):
    assert (
        parse_resume_option(value) is expected
        if isinstance(expected, bool)
        else parse_resume_option(value) == expected
    )


def test_parse_resume_option_rejects_other_types():
    with pytest.raises(CheckpointError, match="must be true, false, auto or a checkpoint path, got 3"):
        parse_resume_option(3)


def test_true_picks_the_highest_step_not_the_last_name(tmp_path):
    for step in (2, 10, 9):  # "checkpoint-9" sorts after "checkpoint-10" as a string
        make_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-99").write_text("a file, not a checkpoint folder")
    (tmp_path / "checkpoint-best").mkdir()
    assert resolve_resume_from_checkpoint(args(tmp_path, "true")) == str(tmp_path / "checkpoint-10")
    assert resolve_resume_from_checkpoint(args(tmp_path, True)) == str(tmp_path / "checkpoint-10")


def test_true_without_checkpoint_names_output_dir(tmp_path):
    with pytest.raises(CheckpointError, match=rf"output_dir '{tmp_path}' holds no finished `checkpoint-N`"):
        resolve_resume_from_checkpoint(args(tmp_path, "true"))
    with pytest.raises(CheckpointError, match="holds no finished"):  # output_dir not created yet
        resolve_resume_from_checkpoint(args(tmp_path / "missing", True))


@pytest.mark.parametrize("kind", ["sapo", "early", "tmp"])
def test_cut_off_save_after_the_latest_is_skipped_and_deleted(tmp_path, caplog, kind):
    """Rank 0's trainer_state.json alone ("sapo") does not make a checkpoint complete: only the marker written after
    the barrier does. The cut-off folder is deleted, so the resumed run saves that step into a clean folder."""
    make_checkpoint(tmp_path, 3)
    make_checkpoint(tmp_path, 4, complete=False, kind=kind)  # SIGKILL during the save
    with caplog.at_level(logging.WARNING, logger="trl_sapo.checkpoints"):
        assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
        assert f"Skipping {tmp_path / 'checkpoint-4'}: no {COMPLETE_MARKER_NAME} (a save that did not finish)" in (
            caplog.text
        )
        assert resolve_resume_from_checkpoint(args(tmp_path, "true")) == str(tmp_path / "checkpoint-3")
    assert f"Deleting {tmp_path / 'checkpoint-4'}: a save that did not finish" in caplog.text
    assert not (tmp_path / "checkpoint-4").exists() and (tmp_path / "checkpoint-3").is_dir()


def test_auto_resumes_from_latest_and_logs_it(tmp_path, caplog):
    assert resolve_resume_from_checkpoint(args(tmp_path)) is None  # empty: fresh start
    assert resolve_resume_from_checkpoint(args(tmp_path / "not-yet-created", "auto")) is None
    make_checkpoint(tmp_path, 1)
    make_checkpoint(tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger="trl_sapo.checkpoints"):
        assert resolve_resume_from_checkpoint(args(tmp_path)) == str(tmp_path / "checkpoint-2")
        assert resolve_resume_from_checkpoint(args(tmp_path, "auto")) == str(tmp_path / "checkpoint-2")
    assert caplog.messages[-1].startswith(f"Resuming from {tmp_path / 'checkpoint-2'}, the latest checkpoint in")


def test_first_save_cut_off_restarts_cleanly(tmp_path):
    """The first checkpoint of a run was cut off (e.g. the save window was too short): `auto` starts fresh (it used
    to refuse forever, "only unfinished checkpoints"), `true` still says there is nothing to resume."""
    make_checkpoint(tmp_path, 1, complete=False)
    with pytest.raises(CheckpointError, match="holds no finished"):
        resolve_resume_from_checkpoint(args(tmp_path, "true"))
    make_checkpoint(tmp_path, 1, complete=False, kind="early")
    assert resolve_resume_from_checkpoint(args(tmp_path)) is None
    assert not (tmp_path / "checkpoint-1").exists()


def test_auto_never_mixes_with_another_trainers_checkpoints(tmp_path, caplog):
    ckpt = make_checkpoint(tmp_path, 5, complete=False, kind="foreign")
    with pytest.raises(CheckpointError, match=f"without {COMPLETE_MARKER_NAME} .*resume from one with"):
        resolve_resume_from_checkpoint(args(tmp_path))
    assert ckpt.is_dir()  # not deleted: it may be a finished checkpoint of another trainer
    with caplog.at_level(logging.WARNING, logger="trl_sapo.checkpoints"):
        assert resolve_resume_from_checkpoint(args(tmp_path, str(ckpt))) == str(ckpt)  # named: used, with a warning
    assert f"{ckpt} has no {COMPLETE_MARKER_NAME}" in caplog.text


def test_false_starts_fresh_but_never_mixes_runs(tmp_path):
    assert resolve_resume_from_checkpoint(args(tmp_path, "false")) is None
    assert resolve_resume_from_checkpoint(args(tmp_path, False)) is None
    (tmp_path / "trainer_state.json").write_text("{}")  # a finished run's final files alone do not block
    assert resolve_resume_from_checkpoint(args(tmp_path, "false")) is None
    make_checkpoint(tmp_path, 5)
    with pytest.raises(CheckpointError, match=r"already holds 1 checkpoint\(s\) of an earlier run \(checkpoint-5\)"):
        resolve_resume_from_checkpoint(args(tmp_path, "false"))


def test_path(tmp_path):
    ckpt = make_checkpoint(tmp_path / "old-run", 7)
    # A path wins over the checkpoints in output_dir.
    make_checkpoint(tmp_path / "out", 9)
    assert resolve_resume_from_checkpoint(args(tmp_path / "out", str(ckpt))) == str(ckpt)
    with pytest.raises(CheckpointError, match="no such folder"):
        resolve_resume_from_checkpoint(args(tmp_path / "out", str(tmp_path / "nope")))
    with pytest.raises(CheckpointError, match="is not a finished checkpoint"):
        resolve_resume_from_checkpoint(args(tmp_path / "out", str(tmp_path / "old-run")))


def test_override_argument(tmp_path):
    make_checkpoint(tmp_path, 1)
    assert resolve_resume_from_checkpoint(args(tmp_path, "false"), "true") == str(tmp_path / "checkpoint-1")


@pytest.mark.parametrize("source", ["cli", "yaml"])
def test_sapo_config_values_from_cli_and_yaml(tmp_path, source):
    """The CLI gives the string 'true', YAML the boolean True: both resume from the latest checkpoint."""
    make_checkpoint(tmp_path / "out", 3)
    flags = ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--bf16", "false", "--report_to", "none"]
    if source == "yaml":
        (tmp_path / "r.yaml").write_text("resume_from_checkpoint: true\n")
        flags += ["--config", str(tmp_path / "r.yaml")]
    else:
        flags += ["--resume_from_checkpoint", "true"]
    (config,) = TrlParser((SAPOConfig,)).parse_args_and_config(flags)
    assert config.resume_from_checkpoint in ("true", True)
    assert resolve_resume_from_checkpoint(config) == str(tmp_path / "out" / "checkpoint-3")


# ---- one rule for both formats, on folders made by the real save code (issues 28.1, 28.2, 31.1) --------------------


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("point", CUT_POINTS)
def test_every_cut_off_point_of_a_real_save_is_recognised(tmp_path, caplog, point, ranks):
    """Whatever point of the save protocol a kill hits, the leftover is this trainer's cut-off save: deleted, and the
    run resumes from the complete checkpoint below it or, when there is none, starts fresh (it used to raise "not
    written by a trl_sapo trainer" for a `rollout_state.pt` + `trainer_state.json` leftover: a requeue loop)."""
    cut = cut_save(
        as_ranks(copy_checkpoint(_SAVES["run"] / "checkpoint-2", tmp_path / "a" / "checkpoint-2"), ranks), point
    )
    assert checkpoint_kind(cut) == "cut_off"
    assert resolve_resume_from_checkpoint(args(tmp_path / "a")) is None  # alone: a fresh start
    assert not cut.exists()

    make_checkpoint(tmp_path / "b", 1)
    cut = cut_save(
        as_ranks(copy_checkpoint(_SAVES["run"] / "checkpoint-2", tmp_path / "b" / "checkpoint-2"), ranks), point
    )
    with caplog.at_level(logging.WARNING, logger="trl_sapo.checkpoints"):
        assert resolve_resume_from_checkpoint(args(tmp_path / "b")) == str(tmp_path / "b" / "checkpoint-1")
    assert f"Deleting {cut}: a save that did not finish" in caplog.text
    assert not cut.exists()


@pytest.mark.parametrize("what", ["export", "foreign", "copy_in_progress"])
def test_folders_it_cannot_prove_its_own_are_left_alone(tmp_path, caplog, what):
    """Only a save this trainer's protocol identifies as its own cut-off save is deleted: a model export, another
    trainer's checkpoint, a copy still being made are skipped with a warning and kept (the first and the last used
    to be deleted, having no trainer_state.json)."""

    def leftover(out):
        if what == "export":
            out.mkdir(parents=True, exist_ok=True)
            return copy_checkpoint(_SAVES["model"], out / "checkpoint-5")
        path = make_checkpoint(out, 5, complete=False, kind="foreign")
        if what == "copy_in_progress":  # the first files of a copy (no trainer_state.json yet)
            for name in os.listdir(path):
                if name not in ("config.json", "model.safetensors"):
                    os.remove(path / name)
        return path

    make_checkpoint(tmp_path / "a", 2)
    kept = leftover(tmp_path / "a")
    assert checkpoint_kind(kept) == "foreign"
    with caplog.at_level(logging.WARNING, logger="trl_sapo.checkpoints"):
        assert resolve_resume_from_checkpoint(args(tmp_path / "a")) == str(tmp_path / "a" / "checkpoint-2")
        assert resolve_resume_from_checkpoint(args(tmp_path / "a", True)) == str(tmp_path / "a" / "checkpoint-2")
    assert f"Skipping {kept}: no {COMPLETE_MARKER_NAME} (not written by a trl_sapo trainer; left alone)" in caplog.text
    assert kept.is_dir() and sorted(os.listdir(kept))

    kept = leftover(tmp_path / "b")  # all there is: refused, not deleted
    with pytest.raises(CheckpointError, match="not written by a trl_sapo trainer .*left alone"):
        resolve_resume_from_checkpoint(args(tmp_path / "b"))
    assert kept.is_dir() and sorted(os.listdir(kept))


def test_an_empty_checkpoint_folder_is_removed(tmp_path):
    """Cut off before its first file (`save_rollout_state` creates the folder): nothing to lose, os.rmdir."""
    (tmp_path / "checkpoint-1").mkdir()
    assert checkpoint_kind(tmp_path / "checkpoint-1") == "empty"
    assert resolve_resume_from_checkpoint(args(tmp_path)) is None
    assert not (tmp_path / "checkpoint-1").exists()


def _legacy(out, step=1):
    return copy_checkpoint(LEGACY_FIXTURE / "checkpoint-1", out / f"checkpoint-{step}")


def test_a_checkpoint_written_by_0_1_resumes_not_deleted(tmp_path, caplog):
    """Issue 31.1: trl-sapo 0.1 wrote no marker; its complete checkpoint (`sapo_rollout_state.pt` and
    `trainer_state.json`, written by that code) used to be taken for a cut-off save and deleted by `auto`."""
    legacy = _legacy(tmp_path)
    assert checkpoint_kind(legacy) == "legacy"
    with caplog.at_level(logging.WARNING, logger="trl_sapo.checkpoints"):
        assert resolve_resume_from_checkpoint(args(tmp_path)) == str(legacy)
    assert f"{legacy} is a trl-sapo 0.1 checkpoint (sapo_rollout_state*.pt, written before" in caplog.text
    assert resolve_resume_from_checkpoint(args(tmp_path, "true")) == str(legacy)
    assert resolve_resume_from_checkpoint(args(tmp_path, str(legacy))) == str(legacy)

    cut = make_checkpoint(tmp_path, 2, complete=False)  # the upgraded run's first save, cut off: deleted
    assert resolve_resume_from_checkpoint(args(tmp_path)) == str(legacy) and not cut.exists()
    newer = make_checkpoint(tmp_path, 3)  # a complete save of the upgraded run wins
    assert resolve_resume_from_checkpoint(args(tmp_path)) == str(newer) and legacy.is_dir()


def test_legacy_format_other_states(tmp_path):
    cut = _legacy(tmp_path, 3)  # a 0.1 save cut off after its rollout state (before the Trainer's files)
    for name in os.listdir(cut):
        if name != "sapo_rollout_state.pt":
            os.remove(cut / name)
    assert checkpoint_kind(cut) == "cut_off"
    marked = _legacy(tmp_path, 2)  # written between the marker (245d829) and the rename (d5ead07): marked
    write_complete_marker(marked, 2, 1)
    assert checkpoint_kind(marked) == "complete"
    assert resolve_resume_from_checkpoint(args(tmp_path)) == str(marked) and not cut.exists()


def test_the_legacy_generator_writes_what_0_1_wrote(tmp_path):
    """`to_legacy_format` (used where a resumable 0.1 checkpoint is needed) gives the file names the 0.1 code wrote
    (MANIFEST.txt of LEGACY_FIXTURE) and a rollout state of the same shape."""
    import torch

    generated = to_legacy_format(copy_checkpoint(_SAVES["run"] / "checkpoint-2", tmp_path / "checkpoint-2"))
    assert sorted(os.listdir(generated)) == legacy_manifest()
    ours = torch.load(generated / "sapo_rollout_state.pt", weights_only=True)
    theirs = torch.load(LEGACY_FIXTURE / "checkpoint-1" / "sapo_rollout_state.pt", weights_only=True)
    assert ours.keys() == theirs.keys() and ours["version"] == theirs["version"] == 1
    assert checkpoint_kind(generated) == "legacy"


def test_marker_writers_on_shared_storage_do_not_collide(tmp_path, monkeypatch):
    """With save_on_each_node two nodes write the marker of one checkpoint on shared storage: each writes its own
    temporary file (a fixed `.tmp` name let one writer's os.replace find its file already moved)."""
    from trl_sapo import checkpoints

    real_dump, other = checkpoints.json.dump, []

    def dump_then_other_node_writes(info, f):
        real_dump(info, f)
        if not other:  # the other node's writer runs to the end while this one has its file open
            other.append(True)
            with monkeypatch.context() as m:
                m.setattr(checkpoints.socket, "gethostname", lambda: "other-node")
                checkpoints.write_complete_marker(tmp_path, 3, 2)

    monkeypatch.setattr(checkpoints.json, "dump", dump_then_other_node_writes)
    checkpoints.write_complete_marker(tmp_path, 3, 2)
    assert os.listdir(tmp_path) == [COMPLETE_MARKER_NAME]


# ---- through scripts/gsm8k_sapo.py ---------------------------------------------------------------------------------


def test_script_resume_true_false_and_auto(tiny_model_path, tmp_path, monkeypatch, caplog):
    """The issue's command, `--resume_from_checkpoint true`, continues the run in output_dir (it used to fail with
    "Can't find a valid checkpoint at true"); `false` refuses to mix runs before loading anything; without the flag
    the script resumes by itself."""
    from test_script import tiny_run_args, write_reward_module

    from trl_sapo.gsm8k.recipe import parse_args
    from trl_sapo.gsm8k.train import train_gsm8k

    monkeypatch.chdir(tmp_path)  # the reward module is imported from the working directory
    out = tmp_path / "out"
    flags = {"reward_funcs": [write_reward_module(tmp_path)], "save_strategy": "steps", "save_steps": 1}

    def run(*extra, **overrides):
        return train_gsm8k(*parse_args(tiny_run_args(tiny_model_path, out, **{**flags, **overrides}) + list(extra)))

    with pytest.raises(CheckpointError, match=f"output_dir '{out}' holds no finished"):
        run("--resume_from_checkpoint", "true", max_steps=1)
    assert run(max_steps=1).state.global_step == 1  # nothing in output_dir: a fresh start
    assert (out / "checkpoint-1" / "trainer_state.json").exists()

    with pytest.raises(CheckpointError, match=r"already holds 1 checkpoint\(s\) of an earlier run \(checkpoint-1\)"):
        run("--resume_from_checkpoint", "false", max_steps=1, model_name_or_path="not/loaded")

    trainer = run("--resume_from_checkpoint", "true", max_steps=2)
    assert trainer.state.global_step == 2
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2]  # step 1 from the checkpoint

    with caplog.at_level(logging.WARNING, logger="trl_sapo.checkpoints"):
        trainer = run(max_steps=3)  # no flag: the same command continues from checkpoint-2
    assert f"Resuming from {out / 'checkpoint-2'}" in caplog.text
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2, 3]


def test_script_help_documents_the_values():
    from trl_sapo.gsm8k.recipe import make_parser

    help_text = " ".join(make_parser().format_help().split())
    assert "--resume_from_checkpoint {true,false,auto,PATH}" in help_text
    assert "auto (default): the latest checkpoint in output_dir if there is one, else a fresh start" in help_text
