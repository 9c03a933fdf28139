"""`ReliabilityMixin` on plain TRL GRPO: GRPOTrainer's own loss, with the watchdog and rollouts in checkpoints."""

from __future__ import annotations

import pytest
import torch
from _reliability_helpers import (
    MID_ROLLOUT,
    inject_nonfinite,
    max_abs_diff,
    tiny_trainer,
    train_losses,
    trainable_state,
)
from trl import GRPOConfig, GRPOTrainer

from trl_sapo import ReliabilityMixin, ReliableGRPOConfig, ReliableGRPOTrainer, SAPOConfigError
from trl_sapo.reliability import NonFiniteWatchdog, PreemptionCallback


def _adam_steps(trainer) -> float:
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    return float(trainer.optimizer.state[param]["step"])


def test_plain_grpo_trainer_gets_the_watchdog(tiny_model_path, tmp_path):
    cls = inject_nonfinite(ReliableGRPOTrainer, {2: "loss"})  # optimizer step 2: NaN loss value
    trainer = tiny_trainer(tiny_model_path, tmp_path, trainer_cls=cls, config_cls=ReliableGRPOConfig, max_steps=3)
    assert isinstance(trainer, GRPOTrainer) and isinstance(trainer._watchdog, NonFiniteWatchdog)
    trainer.train()
    assert trainer.state.global_step == 3
    assert _adam_steps(trainer) == 2.0  # step 2 skipped: the optimizer stepped twice in three steps
    assert [h["nonfinite_steps"] for h in trainer.state.log_history if "loss" in h] == [0.0, 1.0, 1.0]
    assert all(torch.isfinite(v).all() for v in trainable_state(trainer).values())


def test_plain_grpo_trainer_resumes_inside_a_rollout(tiny_model_path, tmp_path):
    kwargs = dict(trainer_cls=ReliableGRPOTrainer, config_cls=ReliableGRPOConfig, **MID_ROLLOUT)
    full = tiny_trainer(tiny_model_path, tmp_path / "full", **kwargs)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    state = torch.load(checkpoint / "rollout_state.pt", weights_only=True)
    assert state["step"] == 6 and state["global_step"] == 3
    # A checkpoint written by trl-sapo 0.1 names the file sapo_rollout_state.pt: it is still read.
    (checkpoint / "rollout_state.pt").rename(checkpoint / "sapo_rollout_state.pt")
    resumed = tiny_trainer(tiny_model_path, tmp_path / "resumed", **kwargs)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert abs(train_losses(resumed)[4] - train_losses(full)[4]) < 1e-6
    assert max_abs_diff(trainable_state(full), trainable_state(resumed)) < 1e-6


def test_mixin_on_a_plain_grpo_config_uses_the_defaults(tiny_model_path, tmp_path):
    class MyTrainer(ReliabilityMixin, GRPOTrainer):
        pass

    trainer = tiny_trainer(tiny_model_path, tmp_path, trainer_cls=MyTrainer, config_cls=GRPOConfig)
    assert trainer._watchdog.policy == "skip" and isinstance(trainer._preemption, PreemptionCallback)
    assert type(trainer).compute_loss is GRPOTrainer.compute_loss and "_compute_loss" not in vars(MyTrainer)


def test_reliable_grpo_config_validates():
    with pytest.raises(ValueError, match="nonfinite_policy") as err:
        ReliableGRPOConfig(output_dir="unused", use_cpu=True, bf16=False, nonfinite_policy="ignore")
    assert not isinstance(err.value, SAPOConfigError)  # the generic config raises a plain ValueError
