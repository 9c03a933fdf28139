"""Non-finite watchdog: a step with a NaN/inf loss or gradient norm is skipped (or raises), never applied."""

from __future__ import annotations

import json

import pytest
import torch
from _reliability_helpers import inject_nonfinite, launch, tiny_trainer, trainable_state
from transformers import TrainerCallback

from trl_sapo import SAPOTrainer
from trl_sapo.reliability import NonFiniteError


class Snapshots(TrainerCallback):
    """Weights and Adam state after every optimizer step (index 0: before training)."""

    def __init__(self):
        self.weights, self.adam_steps, self.exp_avg = [], [], []

    def _take(self, trainer):
        self.weights.append(trainable_state(trainer))
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        state = trainer.optimizer.state.get(params[0], {}) if trainer.optimizer is not None else {}
        self.adam_steps.append(float(state["step"]) if "step" in state else 0.0)
        self.exp_avg.append(state["exp_avg"].clone() if "exp_avg" in state else None)

    def on_train_begin(self, args, state, control, **kwargs):
        self._take(self.trainer)

    def on_step_end(self, args, state, control, **kwargs):
        self._take(self.trainer)


def _run(tiny_model_path, tmp_path, steps, policy="skip", max_steps=3):
    trainer = tiny_trainer(
        tiny_model_path,
        tmp_path,
        trainer_cls=inject_nonfinite(SAPOTrainer, steps),
        max_steps=max_steps,
        nonfinite_policy=policy,
        max_grad_norm=1.0,
    )
    snaps = Snapshots()
    snaps.trainer = trainer
    trainer.add_callback(snaps)
    return trainer, snaps


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # fast check: test_reliability_mixin.py::test_plain_grpo_trainer_gets_the_watchdog
def test_nonfinite_steps_are_skipped(tiny_model_path, tmp_path):
    # Step 2: NaN loss value, finite gradients; step 4: inf gradient, finite loss; step 5: NaN loss and gradients.
    trainer, snaps = _run(tiny_model_path, tmp_path, {2: "loss", 4: "grad", 5: "both"}, max_steps=6)
    trainer.train()
    assert trainer.state.global_step == 6
    w = snaps.weights  # w[s] = weights after step s
    for step in (1, 3, 6):
        assert not _same(w[step - 1], w[step]), f"step {step} must update the weights"
    for step in (2, 4, 5):
        assert _same(w[step - 1], w[step]), f"the non-finite step {step} changed the weights"
    assert all(torch.isfinite(v).all() for v in w[-1].values())
    # Optimizer state untouched by skipped steps: Adam's step count and first moment.
    assert snaps.adam_steps == [0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0]
    assert torch.equal(snaps.exp_avg[1], snaps.exp_avg[2]) and torch.equal(snaps.exp_avg[3], snaps.exp_avg[5])
    # The LR schedule only advanced on the 3 applied steps.
    assert trainer.lr_scheduler.last_epoch == 3
    counts = [h["nonfinite_steps"] for h in trainer.state.log_history if "loss" in h]
    assert counts == [0.0, 1.0, 1.0, 2.0, 3.0, 3.0]


def test_nonfinite_raise_policy(tiny_model_path, tmp_path):
    trainer, snaps = _run(tiny_model_path, tmp_path, {2: "both"}, policy="raise")
    with pytest.raises(NonFiniteError, match="optimizer step 2"):
        trainer.train()
    assert trainer.state.global_step == 1
    assert _same(snaps.weights[-1], trainable_state(trainer)), "raise mode must stop before applying the step"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    "distributed_type, kind, nan_rank, expected_type",
    [
        # Rank 1 alone sees a NaN loss value with finite gradients: only the all-reduced flag makes rank 0 skip too.
        ("MULTI_GPU", "loss", 1, "MULTI_CPU"),  # with use_cpu: DDP over gloo
        # NaN gradients on every rank under ZeRO-2 (fp32): DeepSpeed's own invalid-grad-norm check skips the step.
        ("DEEPSPEED", "both", None, "DEEPSPEED"),
        pytest.param(
            "FSDP",
            "loss",
            1,
            "FSDP",
            marks=pytest.mark.skipif(
                torch.cuda.device_count() < 2,
                reason="needs 2 GPUs: with use_cpu accelerate 1.15 silently runs FSDP configs as MULTI_CPU (DDP)",
            ),
        ),
    ],
)
def test_nonfinite_step_skipped_by_all_ranks(
    tiny_model_path, tmp_path, distributed_type, kind, nan_rank, expected_type
):
    on_gpu = distributed_type == "FSDP"
    config = {"max_steps": 3, "use_cpu": not on_gpu}
    args = ["--model", str(tiny_model_path), "--output_dir", str(tmp_path / "out"), "--result", str(tmp_path / "res")]
    args += ["--nan_step", "2", "--nan_kind", kind, "--config", json.dumps(config)]
    if nan_rank is not None:
        args += ["--nan_rank", str(nan_rank)]
    proc = launch(args, tmp_path=tmp_path, num_processes=2, distributed_type=distributed_type, use_cpu=not on_gpu)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"res.{r}").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world_size"] == 2 and r["global_step"] == 3 and r["weights_finite"]
        assert r["distributed_type"] == expected_type
        counts = [h["nonfinite_steps"] for h in r["log_history"] if "nonfinite_steps" in h]
        assert counts[-1] == 1.0
    assert ranks[0]["weight_sum"] == pytest.approx(ranks[1]["weight_sum"], abs=1e-9), "replicas diverged"
