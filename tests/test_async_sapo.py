"""AsyncSAPOTrainer's loss: the mirror of TRL's async compute_loss, TRL as the baseline, the sync trainer per
loss_type, the config shared with SAPOConfig, the lazy import and the CPU attention path."""

from __future__ import annotations

import inspect
import queue
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import trl
from datasets import Dataset
from helpers import CPU_TRAINING_KWARGS, length_reward
from test_trl_mirror import _digest, replaced_regions
from transformers import AutoModelForCausalLM
from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer
from trl.experimental.async_grpo.async_grpo_trainer import DataCollatorForRollout
from trl.experimental.async_grpo.packing import TreeRow

import trl_sapo.async_sapo.trainer
from trl_sapo import SAPOConfig, SAPOConfigError, SAPOTrainer
from trl_sapo.async_sapo import AsyncSAPOConfig, AsyncSAPOTrainer, varlen_attention

# sha256 (first 12 hex digits) of the TRL lines each SAPO block replaces, in order ("" hashes an insertion).
REPLACED_TRL_REGIONS = ["e3b0c44298fc", "34c083c4d0d5", "e3b0c44298fc", "e3b0c44298fc"]
ASYNC_KWARGS = {
    **{k: v for k, v in CPU_TRAINING_KWARGS.items() if k != "seed"},
    "gradient_checkpointing": False,
    "max_completion_length": 6,
    "rollout_backend": "transformers",
    "token_budget": -1,
    "heartbeat_stale_after_s": 10,  # a stalled schedule fails the test instead of hanging it
}


# --- mirror -----------------------------------------------------------------------------------------------------
def test_async_mirror_citation_and_regions():
    source = inspect.getsource(trl_sapo.async_sapo.trainer)
    cite = re.search(r"# Mirrored from trl==(\S+) (\S+) L(\d+)-L(\d+)", source)
    lines, first = inspect.getsourcelines(AsyncGRPOTrainer.compute_loss)
    assert cite and cite.group(1) == trl.__version__
    assert inspect.getsourcefile(AsyncGRPOTrainer).endswith(cite.group(2))
    assert (int(cite.group(3)), int(cite.group(4))) == (first, first + len(lines) - 1)
    regions = replaced_regions(AsyncGRPOTrainer.compute_loss, AsyncSAPOTrainer.compute_loss)
    digests = [_digest(region) for region in regions]
    assert digests == REPLACED_TRL_REGIONS, "TRL changed a region a SAPO block replaces: read it and port it"


# --- config -----------------------------------------------------------------------------------------------------
def test_config_shares_sapo_fields_defaults_and_validation(tmp_path):
    sync, asyn = SAPOConfig(str(tmp_path), use_cpu=True, bf16=False), AsyncSAPOConfig(str(tmp_path))
    for name in ("use_sapo_loss", "sapo_tau_pos", "sapo_tau_neg", "use_decoupled_loss", "loss_type"):
        assert getattr(sync, name) == getattr(asyn, name), name
    assert asyn.bf16 is (False if not torch.cuda.is_available() else asyn.bf16)
    for bad in ({"sapo_tau_pos": 0.0}, {"use_decoupled_loss": True}, {"sapo_temperature_pos": 2.0},
                {"loss_type": "dapo"}, {"use_sapo_loss": False, "loss_type": "dr_grpo"},
                {"use_sapo_loss": False, "sapo_temperature_neg": 1.0}, {"fixed_lag": 2, "max_staleness": 1},
                {"fixed_lag": 1, "weight_sync_steps": 2}, {"rollout_backend": "sglang"}):  # fmt: skip
        with pytest.raises(SAPOConfigError):
            AsyncSAPOConfig(str(tmp_path), **bad)
    with pytest.raises(SAPOConfigError, match="sapo_tau_pos"):
        AsyncSAPOConfig(str(tmp_path), sapo_temperature_pos=2.0)
    assert AsyncSAPOConfig(str(tmp_path), loss_type="sapo").loss_type == "grpo"


@pytest.mark.slow  # a fresh interpreter importing TRL: ~15 s on 2 shared cores
def test_import_trl_sapo_does_not_import_async():
    code = (
        "import sys, trl_sapo; assert 'trl_sapo.async_sapo' not in sys.modules; "
        "assert not any(m.startswith('trl.experimental') for m in sys.modules); "
        "trl_sapo.AsyncSAPOTrainer; assert 'trl_sapo.async_sapo' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- CPU attention ----------------------------------------------------------------------------------------------
def test_varlen_attention_matches_sdpa_per_segment():
    g = torch.Generator().manual_seed(0)
    lq, lk = [3, 5], [6, 5]  # segment 0: 3 queries at the end of a 6-key path (bottom-right causal)
    q = torch.randn(sum(lq), 4, 8, generator=g)
    k, v = torch.randn(sum(lk), 2, 8, generator=g), torch.randn(sum(lk), 2, 8, generator=g)
    cu_q, cu_k = torch.tensor([0, 3, 8]), torch.tensor([0, 6, 11])
    out = varlen_attention(q, k, v, cu_q, cu_k, 5, 6, causal=True)
    for s in range(2):
        qs = q[cu_q[s] : cu_q[s + 1]].transpose(0, 1)
        ks = k[cu_k[s] : cu_k[s + 1]].repeat_interleave(2, 1).transpose(0, 1)
        vs = v[cu_k[s] : cu_k[s + 1]].repeat_interleave(2, 1).transpose(0, 1)
        mask = torch.ones(lq[s], lk[s], dtype=torch.bool).tril(diagonal=lk[s] - lq[s])
        ref = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).transpose(0, 1)
        torch.testing.assert_close(out[cu_q[s] : cu_q[s + 1]], ref, rtol=1e-5, atol=1e-6)


# --- loss equalities --------------------------------------------------------------------------------------------
class IdleWorker:
    """RolloutWorkerProtocol that never generates (the loss tests feed compute_loss directly)."""

    def __init__(self):
        self.rollout_buffer, self.metrics_queue = queue.Queue(), queue.Queue()

    def start(self): ...
    def stop(self): ...
    def update_model_version(self, version): ...
    def check_health(self, stale_after_s): ...


class NoTransfer:
    def init_weight_transfer(self): ...
    def pause(self): ...
    def send_weights(self, iterator):
        for _ in iterator:
            pass

    def resume(self): ...
    def destroy(self): ...


PROMPTS = Dataset.from_dict({"prompt": [f"Add {i} and {2 * i}." for i in range(8)]})


def async_trainer(cls, config_cls, model_path, tmp_path, **overrides):
    kwargs = {**ASYNC_KWARGS, **overrides}
    if config_cls is AsyncGRPOConfig:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("rollout_backend", "use_sapo_loss", "loss_type")}
    args = config_cls(output_dir=str(tmp_path / cls.__name__), **kwargs)
    trainer = cls(str(model_path), length_reward, args=args, train_dataset=PROMPTS,
                  rollout_worker=IdleWorker(), weight_transfer=NoTransfer())  # fmt: skip
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def samples(model_path, scale=0.3, seed=0):
    """Two prompt groups × 3 completions (shared prompts: packed as a tree) with off-policy old log-probs."""
    g = torch.Generator().manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    out = []
    for group in range(2):
        prompt = torch.randint(10, 1000, (5,), generator=g).tolist()
        for i, length in enumerate((6, 4, 2)):
            completion = torch.randint(10, 1000, (length,), generator=g).tolist()
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                logps = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
            old = torch.cat([torch.zeros(1), logps]) + scale * torch.randn(ids.shape[1], generator=g)
            out.append({"input_ids": np.array(prompt + completion), "completion_mask": np.array([0] * 5 + [1] * length),
                        "old_log_probs": old.numpy().astype(np.float32), "advantage": [1.3, -0.2, -0.9][i] * (1 - 2 * group),
                        "group_id": group, "metrics": {}})  # fmt: skip
    return out


def packed(batch_samples):
    row = TreeRow()
    for sample in batch_samples:
        row.add(sample)
    return DataCollatorForRollout(pad_token_id=0).torch_call([[row]])


def sync_inputs(batch_samples):
    """The same samples as GRPOTrainer's padded (B, T) inputs (equal prompt lengths: no left padding)."""
    T = max(int(s["completion_mask"].sum()) for s in batch_samples)
    comp, mask, old = torch.zeros(len(batch_samples), T, dtype=torch.long), torch.zeros(len(batch_samples), T), torch.zeros(len(batch_samples), T)  # fmt: skip
    for b, s in enumerate(batch_samples):
        n = int(s["completion_mask"].sum())
        comp[b, :n], mask[b, :n] = torch.tensor(s["input_ids"][-n:]), 1
        old[b, :n] = torch.tensor(s["old_log_probs"][-n:])
    return {
        "prompt_ids": torch.tensor(np.stack([s["input_ids"][:5] for s in batch_samples])),
        "prompt_mask": torch.ones(len(batch_samples), 5, dtype=torch.long),
        "completion_ids": comp, "completion_mask": mask.long(), "old_per_token_logps": old,
        "advantages": torch.tensor([s["advantage"] for s in batch_samples]),
        "num_items_in_batch": mask.sum(),
    }  # fmt: skip


def loss_and_grads(trainer, inputs, method="compute_loss"):
    trainer.model.zero_grad()
    loss = getattr(trainer, method)(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(a, b, rtol=2e-5, atol=1e-7):
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=atol)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=rtol, atol=atol * 10, msg=name)


@pytest.fixture(scope="module")
def batch(tiny_model_path):
    return samples(tiny_model_path)


def test_clip_bnpo_equals_trl_async_loss_and_grads(tiny_model_path, tmp_path, batch):
    """use_sapo_loss=False, loss_type='bnpo': TRL's own AsyncGRPOTrainer is the baseline (loss and gradients)."""
    ours = async_trainer(AsyncSAPOTrainer, AsyncSAPOConfig, tiny_model_path, tmp_path, use_sapo_loss=False,
                         loss_type="bnpo")  # fmt: skip
    theirs = async_trainer(AsyncGRPOTrainer, AsyncGRPOConfig, tiny_model_path, tmp_path)
    inputs = packed(batch)
    assert_same(loss_and_grads(ours, dict(inputs)), loss_and_grads(theirs, dict(inputs)), rtol=1e-6)
    assert "clip_ratio/region_mean" in ours._metrics["train"]


@pytest.mark.parametrize("use_sapo_loss", [True, False])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_equals_sync_trainer_per_loss_type(tiny_model_path, tmp_path, batch, loss_type, use_sapo_loss):
    """On the same samples, the async loss and gradient equal the sync SAPOTrainer's for each loss_type."""
    common = {"use_sapo_loss": use_sapo_loss, "loss_type": loss_type, "sapo_tau_pos": 0.7, "sapo_tau_neg": 1.6}
    ours = async_trainer(AsyncSAPOTrainer, AsyncSAPOConfig, tiny_model_path, tmp_path, **common)
    sync_kwargs = {
        **CPU_TRAINING_KWARGS,
        "max_completion_length": 6,
        "per_device_train_batch_size": 6,
        "num_generations": 3,
    }
    sync_args = SAPOConfig(str(tmp_path / "sync"), **sync_kwargs, **common)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    sync = SAPOTrainer(model=model, reward_funcs=length_reward, args=sync_args, train_dataset=PROMPTS)
    sync.model.train()
    sync.current_gradient_accumulation_steps = 1
    a = loss_and_grads(ours, packed(batch))
    b = loss_and_grads(sync, sync_inputs(batch), "_compute_loss")
    assert_same(a, b)
    metrics = ours._metrics["train"]
    assert bool(metrics.get("sapo/grad_weight_mean")) is use_sapo_loss
    assert bool(metrics.get("clip_ratio/region_mean")) is not use_sapo_loss


def test_async_recipe_builds_a_valid_config():
    """recipes/*_async.yaml parse with the GSM8K entry point (async_rollouts: true) into a valid AsyncSAPOConfig."""
    from helpers import REPO_ROOT

    from trl_sapo.gsm8k.recipe import check_args, parse_args

    recipes = sorted((REPO_ROOT / "recipes").glob("*_async.yaml"))
    assert {path.name for path in recipes} >= {"smollm2-135m_cpu_async.yaml", "qwen2.5-0.5b-instruct_sapo_async.yaml"}
    for path in recipes:
        script_args, config, model_args = parse_args(["--config", str(path)])
        check_args(script_args, config, model_args)
        assert isinstance(config, AsyncSAPOConfig)
        if "cpu" in path.name:
            assert config.rollout_backend == "transformers" and config.fixed_lag == 2
        else:
            assert config.rollout_backend == "vllm" and config.fixed_lag is None
