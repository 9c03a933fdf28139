"""Resuming from a checkpoint reproduces the uninterrupted run exactly, including from inside a rollout.

GRPOTrainer reuses one generation for `steps_per_generation × num_iterations` micro-steps. Its checkpoints hold
neither the buffered rollouts nor the micro-step counter, so a run resumed inside a rollout regenerates with the
updated policy and diverges (measured: final weights off by ~1e-2 on this tiny setup). SAPOTrainer saves both.
"""

from __future__ import annotations

import pytest
import torch
from _reliability_helpers import MID_ROLLOUT, max_abs_diff, tiny_trainer, train_losses, trainable_state

from trl_sapo.reliability import rollouts

FULL = MID_ROLLOUT  # mid-rollout: a generation serves 4 micro-steps × 2 iterations = 4 optimizer steps (GA 2)
LORA = dict(num_iterations=2, steps_per_generation=2, max_steps=4, save_strategy="steps", save_steps=2)


def _uninterrupted_then_resumed(tiny_model_path, tmp_path, config, resume_step, peft=False):
    full = tiny_trainer(tiny_model_path, tmp_path / "full", peft=peft, **config)
    full.train()
    checkpoint = tmp_path / "full" / f"checkpoint-{resume_step}"
    resumed = tiny_trainer(tiny_model_path, tmp_path / "resumed", peft=peft, **config)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    return full, resumed, checkpoint


def _assert_same_run(full, resumed, resume_step):
    assert resumed.state.global_step == full.state.global_step == 4
    full_losses, resumed_losses = train_losses(full), train_losses(resumed)
    for step in range(resume_step + 1, 5):
        assert abs(resumed_losses[step] - full_losses[step]) < 1e-6, (step, resumed_losses, full_losses)
    assert max_abs_diff(trainable_state(full), trainable_state(resumed)) < 1e-6
    assert resumed._step == full._step


@pytest.mark.slow  # fast check: test_reliability_mixin.py::test_plain_grpo_trainer_resumes_inside_a_rollout
def test_resume_inside_rollout_full_finetune(tiny_model_path, tmp_path, monkeypatch):
    # checkpoint-3 = micro-step 6 of 8: inside the second pass (num_iterations) over the buffered generation.
    full, resumed, checkpoint = _uninterrupted_then_resumed(tiny_model_path, tmp_path, FULL, resume_step=3)
    state = torch.load(checkpoint / "rollout_state.pt", weights_only=True)
    assert state["step"] == 6 and state["global_step"] == 3
    assert len(state["buffered_inputs"]) == FULL["steps_per_generation"]
    assert state["buffered_inputs"][0]["completion_ids"].shape[0] == FULL["per_device_train_batch_size"]
    _assert_same_run(full, resumed, resume_step=3)

    # Negative control: without the saved rollouts (plain GRPOTrainer's behaviour) the same checks fail.
    monkeypatch.setattr(rollouts, "load_rollout_state", lambda trainer, checkpoint: None)
    plain = tiny_trainer(tiny_model_path, tmp_path / "plain", **FULL)
    plain.train(resume_from_checkpoint=str(checkpoint))
    assert max_abs_diff(trainable_state(full), trainable_state(plain)) > 1e-4
    assert abs(train_losses(plain)[4] - train_losses(full)[4]) > 1e-6


@pytest.mark.slow
def test_resume_inside_rollout_lora(tiny_model_path, tmp_path):
    full, resumed, _ = _uninterrupted_then_resumed(tiny_model_path, tmp_path, LORA, resume_step=2, peft=True)
    assert any("lora_" in name for name in trainable_state(full))
    _assert_same_run(full, resumed, resume_step=2)


def test_resume_true_uses_the_completion_rule_and_reads_a_0_1_checkpoint(tiny_model_path, tmp_path, monkeypatch):
    """`trainer.train(resume_from_checkpoint=True)` (what the docs tell API users) resolves by this project's rule,
    not transformers' `get_last_checkpoint`: a cut-off save above the last complete checkpoint is deleted, not
    resumed from (it used to be). A checkpoint in trl-sapo 0.1's format resumes, its rollouts restored."""
    from _checkpoint_fixtures import cut_save, to_legacy_format

    restored = []
    real_load = rollouts.load_rollout_state

    def spy(trainer, checkpoint):
        state = real_load(trainer, checkpoint)
        restored.append((checkpoint, state is not None))
        return state

    monkeypatch.setattr(rollouts, "load_rollout_state", spy)
    out = tmp_path / "out"
    first = tiny_trainer(tiny_model_path, out, max_steps=2, save_strategy="steps", save_steps=1)
    first.train()
    cut_save(out / "checkpoint-2", "marker")  # killed before the marker: trainer_state.json, no marker
    to_legacy_format(out / "checkpoint-1")  # and the complete one below it as trl-sapo 0.1 wrote it
    resumed = tiny_trainer(tiny_model_path, out, max_steps=3, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=True)
    assert restored == [(str(out / "checkpoint-1"), True)]
    assert resumed.state.global_step == 3
    assert [e["step"] for e in resumed.state.log_history if "loss" in e] == [1, 2, 3]  # step 1 from the checkpoint
