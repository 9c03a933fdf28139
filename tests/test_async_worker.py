"""AsyncSAPOTrainer end to end on CPU with the transformers rollout worker: lag 0 is on-policy, lag k > 0 makes the
gate act, stale samples are dropped and counted, checkpoint + resume, a worker crash surfaces fast, no thread left."""

from __future__ import annotations

import json
import queue
import threading
import time

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import length_reward
from test_async_sapo import ASYNC_KWARGS, NoTransfer
from transformers import AutoModelForCausalLM
from trl.experimental.async_grpo.async_rollout_worker import RolloutSample

from trl_sapo.async_sapo import AsyncSAPOConfig, AsyncSAPOTrainer, RolloutWorkerError
from trl_sapo.async_sapo.trainer import STATE_NAME

PROMPTS = Dataset.from_dict({"prompt": [f"Add {i} and {2 * i}." for i in range(16)]})


def run(model_path, tmp_path, reward=length_reward, resume=None, **overrides):
    kwargs = {**ASYNC_KWARGS, "learning_rate": 0.05, "max_steps": 4, "logging_steps": 1, **overrides}
    args = AsyncSAPOConfig(output_dir=str(tmp_path / "out"), **kwargs)
    trainer = AsyncSAPOTrainer(str(model_path), reward, args=args, train_dataset=PROMPTS)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def logged(trainer, key):
    return [row[key] for row in trainer.state.log_history if key in row]


def worker_threads():
    return [t for t in threading.enumerate() if t.name == "trl-sapo-rollout-worker"]


def test_lag_zero_is_on_policy(tiny_model_path, tmp_path):
    trainer = run(tiny_model_path, tmp_path, fixed_lag=0, max_staleness=0)
    assert logged(trainer, "sample/staleness_max") == [0.0] * 4
    for ratio in logged(trainer, "sapo/ratio_mean"):
        assert abs(ratio - 1) < 1e-4  # packed CPU tree attention vs the generator's KV-cached forward
    assert all(abs(w - 1) < 1e-4 for w in logged(trainer, "sapo/grad_weight_mean"))
    assert not worker_threads()


def test_lag_two_gate_acts_and_checkpoint_resumes(tiny_model_path, tmp_path):
    before = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    trainer = run(tiny_model_path, tmp_path, fixed_lag=2, max_staleness=2, save_strategy="steps", save_steps=4)
    assert logged(trainer, "sample/staleness_max") == [0.0, 1.0, 2.0, 2.0]  # min(step, k)
    ratios = logged(trainer, "sapo/ratio_mean")
    assert abs(ratios[0] - 1) < 1e-4 and abs(ratios[3] - 1) > 1e-3
    assert logged(trainer, "sapo/grad_weight_mean")[3] < 1 - 1e-4
    assert all(np.isfinite(logged(trainer, "loss")))
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    checkpoint = tmp_path / "out" / "checkpoint-4"
    state = json.loads((checkpoint / STATE_NAME).read_text())
    assert state["model_version"] == 5 and state["prompt_index"] == 4  # 4 steps x 1 group, 1 + 4 syncs
    resumed = run(tiny_model_path, tmp_path, fixed_lag=2, max_staleness=2, max_steps=5, resume=str(checkpoint))
    assert resumed.state.global_step == 5 and resumed.model_version == 7  # saved 5, +1 initial sync, +1 step
    assert logged(resumed, "sample/staleness_max")[-1] == 0.0  # older policies are gone after a resume
    assert not worker_threads()


def test_worker_crash_surfaces_within_seconds(tiny_model_path, tmp_path):
    calls = []

    def reward_that_breaks(completions, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("reward server down")
        return [float(len(c)) for c in completions]

    start = time.monotonic()
    with pytest.raises(RolloutWorkerError, match="reward server down"):
        run(tiny_model_path, tmp_path, reward=reward_that_breaks, fixed_lag=0, max_staleness=0, max_steps=3)
    assert time.monotonic() - start < 30  # the whole run incl. model loading; the queue timeout alone is 5 s
    assert not worker_threads()


class QueuedWorker:
    """A worker that hands out pre-made samples (stale and fresh), for the max_staleness drop count."""

    def __init__(self, samples):
        self.rollout_buffer, self.metrics_queue = queue.Queue(), queue.Queue()
        for sample in samples:
            self.rollout_buffer.put(sample)

    def start(self): ...
    def stop(self): ...
    def update_model_version(self, version): ...
    def check_health(self, stale_after_s): ...


def test_stale_samples_dropped_and_counted(tiny_model_path, tmp_path):
    def sample(version, group):
        ids = np.arange(10, 18)
        return RolloutSample(prompt="p", completion="c", input_ids=ids, completion_mask=np.array([0] * 4 + [1] * 4),
                             old_log_probs=np.full(8, -10.0, dtype=np.float32), advantage=float(group % 2 * 2 - 1),
                             model_version=version, group_id=group, metrics={"reward": 0.0})  # fmt: skip

    # after the initial sync the trainer is at version 1: version-0 samples are 1 stale, past max_staleness=0
    samples = [sample(0, g) for g in range(4)] + [sample(1, 4 + g) for g in range(4)]
    args = AsyncSAPOConfig(output_dir=str(tmp_path / "out"), **{**ASYNC_KWARGS, "max_steps": 1, "max_staleness": 0})
    trainer = AsyncSAPOTrainer(str(tiny_model_path), length_reward, args=args, train_dataset=PROMPTS,
                               rollout_worker=QueuedWorker(samples), weight_transfer=NoTransfer())  # fmt: skip
    trainer.train()
    assert logged(trainer, "sample/dropped_stale_total") == [4.0]
    assert logged(trainer, "sample/dropped_stale_share") == [0.5]
    assert logged(trainer, "sample/staleness_max") == [0.0]


def test_sigterm_saves_a_checkpoint_that_resumes(tiny_model_path, tmp_path):
    """SIGTERM during step 2: the step finishes, a checkpoint (with the worker's resume state) is saved, train()
    returns with `preempted`, and a new trainer resumes from it to the end."""
    import os
    import signal

    from transformers import TrainerCallback

    class SigtermAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    kwargs = {**ASYNC_KWARGS, "learning_rate": 0.05, "max_steps": 4, "fixed_lag": 1, "max_staleness": 1}
    args = AsyncSAPOConfig(output_dir=str(tmp_path / "out"), **kwargs)
    trainer = AsyncSAPOTrainer(str(tiny_model_path), length_reward, args=args, train_dataset=PROMPTS,
                               callbacks=[SigtermAtStep2()])  # fmt: skip
    trainer.train()
    assert trainer.preempted and trainer.state.global_step == 2
    assert json.loads((tmp_path / "out" / "checkpoint-2" / STATE_NAME).read_text())["prompt_index"] == 2
    assert signal.getsignal(signal.SIGTERM) is not trainer._preemption._handler  # handler uninstalled
    resumed = run(
        tiny_model_path, tmp_path, fixed_lag=1, max_staleness=1, resume=str(tmp_path / "out" / "checkpoint-2")
    )
    assert resumed.state.global_step == 4 and not resumed.preempted
    assert not worker_threads()


def test_nonfinite_step_is_skipped(tiny_model_path, tmp_path):
    """A NaN loss on step 2 (nonfinite_policy='skip'): the optimizer step is skipped and counted, training goes on."""
    kwargs = {**ASYNC_KWARGS, "learning_rate": 0.05, "max_steps": 3, "fixed_lag": 0, "max_staleness": 0}
    args = AsyncSAPOConfig(output_dir=str(tmp_path / "out"), **kwargs)
    trainer = AsyncSAPOTrainer(str(tiny_model_path), length_reward, args=args, train_dataset=PROMPTS)
    compute_loss, snapshots = trainer.compute_loss, []

    def nan_on_step_2(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return loss * float("nan") if trainer.state.global_step == 1 else loss

    trainer.compute_loss = nan_on_step_2
    trainer.train()
    assert trainer.state.global_step == 3 and logged(trainer, "nonfinite_steps")[-1] == 1.0
    assert all(torch.equal(snapshots[1][n], snapshots[2][n]) for n in snapshots[1])  # step 2 changed nothing
    assert any(not torch.equal(snapshots[0][n], snapshots[1][n]) for n in snapshots[0])  # step 1 did


@pytest.mark.slow  # SmolLM2-135M on CPU: ~30 s
def test_packed_cpu_attention_matches_the_generator_on_smollm2(smollm2_path, tmp_path):
    """The real check of the CPU tree attention: on SmolLM2 (sharp logits, GQA 9/3 heads, prompts packed as a tree)
    the trainer's packed log-probs equal the generator's unpacked KV-cached ones at lag 0 (r = 1 up to float32)."""
    trainer = run(smollm2_path, tmp_path, fixed_lag=0, max_staleness=0, max_steps=1, learning_rate=1e-6,
                  max_completion_length=12)  # fmt: skip
    (row,) = [row for row in trainer.state.log_history if "sapo/ratio_mean" in row]
    assert abs(row["sapo/ratio_mean"] - 1) < 1e-4 and row["sapo/ratio_max"] < 1 + 1e-3, row
    assert row["batch/packing_ratio"] > 1  # the group's shared prompt was forwarded once


def test_lora_adapter_reaches_the_generator(tiny_model_path, tmp_path):
    """PEFT: TRL merges the adapter for each sync; the generator loads the merged weights under their base names."""
    from peft import LoraConfig

    kwargs = {**ASYNC_KWARGS, "learning_rate": 0.05, "max_steps": 2, "fixed_lag": 0, "max_staleness": 0}
    args = AsyncSAPOConfig(output_dir=str(tmp_path / "out"), **kwargs)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = AsyncSAPOTrainer(str(tiny_model_path), length_reward, args=args, train_dataset=PROMPTS, peft_config=lora)
    trainer.train()
    merged = trainer.model.merge_and_unload().state_dict()
    generator = trainer.rollout_worker.model.state_dict()
    assert all(torch.allclose(generator[k], merged[k], atol=1e-6) for k in generator if k in merged)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    assert any(not torch.equal(generator[k], base[k]) for k in generator if "q_proj" in k)  # the adapter arrived
    for ratio in logged(trainer, "sapo/ratio_mean"):
        assert abs(ratio - 1) < 1e-4  # lag 0: the generator holds the merged policy the trainer scores


def test_fixed_lag_counts_optimizer_steps_under_accumulation(tiny_model_path, tmp_path):
    """With 2 micro-batches per optimizer step, both micro-batches of step s come from the policy of step s - k."""
    trainer = run(tiny_model_path, tmp_path, fixed_lag=1, max_staleness=1, max_steps=3, gradient_accumulation_steps=2)
    assert logged(trainer, "sample/staleness_max") == [0.0, 1.0, 1.0]
    assert logged(trainer, "sample/staleness_mean") == [0.0, 1.0, 1.0]
    assert logged(trainer, "batch/microbatches_per_step") == [2.0, 2.0, 2.0]


def test_free_running_worker_trains(tiny_model_path, tmp_path):
    """fixed_lag=None: the worker generates ahead with the newest weights, bounded by the queue; staleness is
    whatever timing gives, within max_staleness."""
    trainer = run(tiny_model_path, tmp_path, max_staleness=3, queue_maxsize=8)
    assert trainer.state.global_step == 4 and all(np.isfinite(logged(trainer, "loss")))
    assert all(0 <= s <= 3 for s in logged(trainer, "sample/staleness_max"))
    assert logged(trainer, "sapo/grad_weight_mean") and not worker_threads()
