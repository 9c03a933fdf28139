"""`resume_from_checkpoint` = true / false / auto (default) / a path, from the CLI and from YAML
(trl_sapo/checkpoints.py); the end-to-end auto-resume through scripts/gsm8k_sapo.py is in test_slurm.py's requeue
test and test_script.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from trl import TrlParser

from trl_sapo import SAPOConfig
from trl_sapo.checkpoints import (
    COMPLETE_MARKER_NAME,
    CheckpointError,
    latest_checkpoint,
    parse_resume_option,
    resolve_resume_from_checkpoint,
    write_complete_marker,
)


def make_checkpoint(output_dir, step, complete=True, kind="sapo"):
    """A `checkpoint-N` folder: complete = marked (every rank saved); else a save cut off before the marker
    (kind "sapo": rank 0 got as far as trainer_state.json, "early": not even that); kind "foreign": another
    trainer's checkpoint (trainer_state.json, no rollout state, no marker)."""
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete or kind != "early":
        (path / "trainer_state.json").write_text("{}")
    if kind != "foreign":
        (path / "sapo_rollout_state_0.pt").write_bytes(b"")
    if complete and kind != "foreign":
        write_complete_marker(path, step, 2)
    return path


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


@pytest.mark.parametrize("kind", ["sapo", "early"])
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
