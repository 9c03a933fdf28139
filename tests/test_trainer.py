"""SAPOTrainer against TRL's GRPOTrainer on the same model and inputs, and a real off-policy training run."""

import copy
import dataclasses
import math

import pytest
import torch
from datasets import Dataset
from helpers import CPU_TRAINING_KWARGS, length_reward
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer, TrlParser

import trl_sapo.trainer as trl_sapo_trainer
from trl_sapo import SAPOConfig, SAPOTrainer

COMMON = {**CPU_TRAINING_KWARGS, "max_completion_length": 6}


@pytest.fixture(scope="module")
def prompts() -> Dataset:
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Add {i} and {2 * i}."}] for i in range(8)]})


def make_trainer(cls, config_cls, model_path, prompts, tmp_path, **overrides):
    args = config_cls(output_dir=str(tmp_path / cls.__name__), **{**COMMON, **overrides})
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    trainer = cls(model=model, reward_funcs=length_reward, args=args, train_dataset=prompts)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    return trainer


def fixed_inputs(seed: int = 0, off_policy_scale: float = 0.3, vocab: int = 1000, beta: bool = False):
    """A hand-built batch as GRPOTrainer's _prepare_inputs returns it, with real off-policy old log-probs."""
    g = torch.Generator().manual_seed(seed)
    B, P, T = 4, 5, 6
    completion_mask = torch.ones(B, T, dtype=torch.long)
    completion_mask[1, 4:] = 0
    completion_mask[3, 2:] = 0
    inputs = {
        "prompt_ids": torch.randint(10, vocab, (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(10, vocab, (B, T), generator=g),
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.2, -0.4, 0.0, -0.8]),
        "num_items_in_batch": completion_mask.sum().float(),
    }
    return inputs, g


def with_old_logps(trainer, inputs, g, scale):
    """old = current log-probs + noise, so ratios exp(±scale) are genuinely off-policy."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, attn, inputs["completion_ids"].size(1)
        )
    out = dict(inputs)
    out["old_per_token_logps"] = logps + scale * torch.randn(logps.shape, generator=g)
    out["ref_per_token_logps"] = logps + 0.1 * torch.randn(logps.shape, generator=g)
    out["sampling_per_token_logps"] = out["old_per_token_logps"] + 0.05 * torch.randn(logps.shape, generator=g)
    out["importance_sampling_ratio"] = torch.exp(0.05 * torch.randn(logps.shape, generator=g))
    return out


def loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(a, b, rtol=1e-5, atol=1e-7):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=atol)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=rtol, atol=atol, msg=name)


PARITY_CASES = {
    "token": {},
    "sequence": {"importance_sampling_level": "sequence"},
    "asymmetric-tau": {"tau": (0.6, 1.7)},
    "kl-beta": {"beta": 0.04},
    "kl-beta-no-bias-correction": {"beta": 0.04, "use_bias_correction_kl": False},
    "top-entropy": {"top_entropy_quantile": 0.5},
    "off-policy-mask": {"off_policy_mask_threshold": 0.01},
    "entropy-bonus": {"entropy_coef": 0.01},
    "adaptive-entropy": {"entropy_coef": 0.01, "use_adaptive_entropy": True, "entropy_target": 100.0},
    "grad-accumulation": {"gradient_accumulation_steps": 2},
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_matches_trl_sapo_loss_and_gradients(case, tiny_model_path, prompts, tmp_path):
    """For moderate ratios SAPOTrainer == GRPOTrainer(loss_type='sapo') to float32 rounding (loss and grads)."""
    overrides = dict(PARITY_CASES[case])
    tau_pos, tau_neg = overrides.pop("tau", (1.0, 1.05))
    ours = make_trainer(
        SAPOTrainer, SAPOConfig, tiny_model_path, prompts, tmp_path,
        sapo_tau_pos=tau_pos, sapo_tau_neg=tau_neg, **overrides,
    )  # fmt: skip
    trl = make_trainer(
        GRPOTrainer, GRPOConfig, tiny_model_path, prompts, tmp_path,
        loss_type="sapo", sapo_temperature_pos=tau_pos, sapo_temperature_neg=tau_neg, **overrides,
    )  # fmt: skip
    inputs, g = fixed_inputs()
    inputs = with_old_logps(ours, inputs, g, scale=0.3)
    assert_same(loss_and_grads(ours, inputs), loss_and_grads(trl, inputs))
    assert ours._metrics["train"]["entropy"] == pytest.approx(trl._metrics["train"]["entropy"])


AGGREGATION_CASES = {
    "grpo": {},
    "bnpo": {"loss_type": "bnpo"},
    "dr_grpo": {"loss_type": "dr_grpo"},
    "dapo": {"loss_type": "dapo"},
    "dapo-accumulation": {"loss_type": "dapo", "gradient_accumulation_steps": 2, "steps_per_generation": 4},
    "luspo": {"loss_type": "luspo", "importance_sampling_level": "sequence"},
    "bnpo-kl-entropy": {"loss_type": "bnpo", "beta": 0.04, "entropy_coef": 0.01},
}


@pytest.mark.parametrize("case", list(AGGREGATION_CASES))
def test_on_policy_with_tau_2_equals_grpo_for_every_aggregation(case, tiny_model_path, prompts, tmp_path):
    """With τ = 2, f(1) = 1 and w(1) = 1, so on-policy SAPO must equal GRPOTrainer's loss for each loss_type:
    this pins our aggregation, KL and entropy handling to TRL's for the aggregations TRL's 'sapo' lacks."""
    overrides = {"loss_type": "grpo", **AGGREGATION_CASES[case]}
    ours = make_trainer(
        SAPOTrainer, SAPOConfig, tiny_model_path, prompts, tmp_path, sapo_tau_pos=2.0, sapo_tau_neg=2.0, **overrides
    )
    trl = make_trainer(GRPOTrainer, GRPOConfig, tiny_model_path, prompts, tmp_path, **overrides)
    inputs, g = fixed_inputs(seed=2)
    inputs = with_old_logps(ours, inputs, g, scale=0.0)
    inputs.pop("old_per_token_logps")  # what GRPOTrainer passes on-policy: old = current.detach()
    assert_same(loss_and_grads(ours, inputs), loss_and_grads(trl, inputs))


@pytest.mark.parametrize(
    "overrides",
    [{}, {"importance_sampling_level": "sequence"}, {"loss_type": "dapo"}, {"beta": 0.04, "delta": 1.5}],
    ids=["grpo", "gspo", "dapo", "kl-delta"],
)
def test_use_sapo_loss_false_is_grpo_clipping(overrides, tiny_model_path, prompts, tmp_path):
    overrides = {"loss_type": "grpo", **overrides}
    ours = make_trainer(SAPOTrainer, SAPOConfig, tiny_model_path, prompts, tmp_path, use_sapo_loss=False, **overrides)
    trl = make_trainer(GRPOTrainer, GRPOConfig, tiny_model_path, prompts, tmp_path, **overrides)
    inputs, g = fixed_inputs(seed=3)
    inputs = with_old_logps(ours, inputs, g, scale=0.5)
    assert_same(loss_and_grads(ours, inputs), loss_and_grads(trl, inputs), rtol=0, atol=0)


def test_extreme_ratios_give_finite_gradients_where_trl_sapo_gives_nan(tiny_model_path, prompts, tmp_path):
    ours = make_trainer(SAPOTrainer, SAPOConfig, tiny_model_path, prompts, tmp_path)
    trl = make_trainer(GRPOTrainer, GRPOConfig, tiny_model_path, prompts, tmp_path, loss_type="sapo")
    inputs, g = fixed_inputs(seed=4)
    inputs = with_old_logps(ours, inputs, g, scale=0.0)
    inputs["old_per_token_logps"] = inputs["old_per_token_logps"].clone()
    inputs["old_per_token_logps"][0, 0] -= 120.0  # log r = +120: exp overflows in float32
    loss, grads = loss_and_grads(ours, inputs)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
    _, trl_grads = loss_and_grads(trl, inputs)
    assert any(not torch.isfinite(g).all() for g in trl_grads.values())  # the bug we fix


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_extreme_ratio_with_kl_penalty_is_finite_and_exact(level, tiny_model_path, prompts, tmp_path):
    """beta > 0 with use_bias_correction_kl (TRL's default) at log r = +120: GRPOTrainer's exp(log r) · KL was an
    inf loss (issue 30 item 9). Loss and gradients must equal the documented objective computed in float64, where
    exp(120) is finite: −f(r)·A + beta · min(r, e^KL_LOG_WEIGHT_MAX) · KL, aggregated as loss_type 'grpo'."""
    ours = make_trainer(
        SAPOTrainer, SAPOConfig, tiny_model_path, prompts, tmp_path, beta=0.04, importance_sampling_level=level
    )
    assert ours.args.use_bias_correction_kl
    inputs, g = fixed_inputs(seed=7)
    inputs = with_old_logps(ours, inputs, g, scale=0.3)
    inputs["old_per_token_logps"][0] -= 120.0  # log r ≈ +120 on every token of sequence 0 (and its mean)
    inputs["old_per_token_logps"][2] += 120.0  # log r ≈ −120: r underflows to 0
    loss, grads = loss_and_grads(ours, inputs)
    assert torch.isfinite(loss) and all(torch.isfinite(grad).all() for grad in grads.values())

    ours.model.zero_grad()
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    logps, _, _ = ours._get_per_token_logps_and_entropies(ours.model, ids, attn, inputs["completion_ids"].size(1))
    logps, mask = logps.double(), inputs["completion_mask"].double()
    log_r = logps - inputs["old_per_token_logps"].double()
    if level == "sequence":
        log_r = ((log_r * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)).expand_as(logps)
    advantages = inputs["advantages"].double().unsqueeze(1)
    tau = torch.where(advantages > 0, 1.0, 1.05)
    gate = 4 / tau * torch.sigmoid(tau * (torch.exp(log_r) - 1))  # float64: exp(120) ≈ 1.3e52 is finite
    delta = inputs["ref_per_token_logps"].double() - logps
    kl = (torch.exp(delta) - delta - 1) * torch.exp(log_r.clamp(max=trl_sapo_trainer.KL_LOG_WEIGHT_MAX))
    per_token = -gate * advantages + 0.04 * kl
    expected = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-4, atol=0)  # float32 KL cancellation
    for name, param in ours.model.named_parameters():  # float32 rounding, relative to the tensor's largest entry
        scale = param.grad.abs().max().item()
        message = lambda m, name=name: f"{name}: {m}"  # noqa: E731
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-5 * scale, msg=message)


def test_sapo_metrics_and_no_clip_metrics(tiny_model_path, prompts, tmp_path):
    ours = make_trainer(SAPOTrainer, SAPOConfig, tiny_model_path, prompts, tmp_path)
    inputs, g = fixed_inputs(seed=5)
    inputs = with_old_logps(ours, inputs, g, scale=0.3)
    ours.compute_loss(ours.model, inputs)
    metrics = ours._metrics["train"]
    for name in ("gate_mean", "grad_weight_mean", "soft_clip_ratio"):
        for suffix in ("", "_pos", "_neg"):
            value = metrics[f"sapo/{name}{suffix}"][-1]
            assert math.isfinite(value), name + suffix
    assert 0 < metrics["sapo/ratio_mean"][-1] <= metrics["sapo/ratio_max"][-1]
    assert not any(k.startswith("clip_ratio") for k in metrics)


def test_sapo_loss_type_alias_aggregates_like_grpo(tiny_model_path, prompts, tmp_path):
    a = make_trainer(SAPOTrainer, SAPOConfig, tiny_model_path, prompts, tmp_path, loss_type="sapo")
    b = make_trainer(SAPOTrainer, SAPOConfig, tiny_model_path, prompts, tmp_path, loss_type="grpo")
    inputs, g = fixed_inputs(seed=6)
    inputs = with_old_logps(a, inputs, g, scale=0.3)
    assert_same(loss_and_grads(a, inputs), loss_and_grads(b, inputs), rtol=0, atol=0)


def test_rejects_plain_grpo_config_with_advice_that_works(tiny_model_path, prompts, tmp_path):
    """The TypeError's advice is followed literally and yields an equivalent SAPOConfig (issue 30 item 10: the old
    advice, SAPOConfig(**grpo_config.to_dict()), always raised)."""
    args = GRPOConfig(
        output_dir=str(tmp_path), **{**COMMON, "per_device_train_batch_size": 2},
        generation_batch_size=8, beta=0.04, loss_type="dapo", temperature=0.7, hub_token="secret",
    )  # fmt: skip
    with pytest.raises(TypeError, match=r"trl_sapo\.trainer\.sapo_config_from_grpo\(your_grpo_config\)"):
        SAPOTrainer(model=str(tiny_model_path), reward_funcs=length_reward, args=args, train_dataset=prompts)
    converted = trl_sapo_trainer.sapo_config_from_grpo(args, sapo_tau_neg=1.5)
    assert isinstance(converted, SAPOConfig) and converted.sapo_tau_neg == 1.5
    for field in dataclasses.fields(GRPOConfig):
        if field.init:
            assert getattr(converted, field.name) == getattr(args, field.name), field.name
    trainer = SAPOTrainer(
        model=str(tiny_model_path), reward_funcs=length_reward, args=converted, train_dataset=prompts
    )
    assert trainer.args.generation_batch_size == 8 and trainer.args.steps_per_generation == 4


def test_off_policy_training_run(tiny_model_path, prompts, tmp_path):
    """num_iterations=2 and steps_per_generation > gradient_accumulation_steps: old ≠ current log-probs."""
    args = SAPOConfig(
        output_dir=str(tmp_path / "run"),
        **{**COMMON, "per_device_train_batch_size": 2, "num_generations": 4},
        learning_rate=5e-2,
        max_steps=4,
        num_iterations=2,
        gradient_accumulation_steps=1,
        steps_per_generation=2,
    )
    trainer = SAPOTrainer(model=str(tiny_model_path), reward_funcs=length_reward, args=args, train_dataset=prompts)
    before = copy.deepcopy(trainer.model.state_dict())
    trainer.train()
    changed = [n for n, p in trainer.model.state_dict().items() if not torch.equal(p, before[n])]
    assert changed
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4 and all(math.isfinite(h["loss"]) for h in logs)
    assert all(f"sapo/{k}" in logs[0] for k in ("gate_mean", "grad_weight_mean", "soft_clip_ratio", "ratio_max"))
    # After the first optimizer step within a rollout the ratio is no longer 1: the gate actually acts.
    assert max(abs(h["sapo/ratio_max"] - 1.0) for h in logs[1:]) > 1e-3


def test_config_fields_via_trlparser_cli_and_yaml(tmp_path):
    parser = TrlParser((SAPOConfig,))
    (args,) = parser.parse_args_and_config(
        ["--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false", "--sapo_tau_pos", "0.8",
         "--sapo_tau_neg", "1.5", "--use_sapo_loss", "false"]
    )  # fmt: skip
    assert (args.sapo_tau_pos, args.sapo_tau_neg, args.use_sapo_loss) == (0.8, 1.5, False)
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(
        f"output_dir: {tmp_path}\nuse_cpu: true\nbf16: false\nsapo_tau_pos: 0.9\nsapo_tau_neg: 1.2\n"
        "use_decoupled_loss: false\nuse_sapo_loss: true\n"
    )
    (args,) = parser.parse_args_and_config(["--config", str(cfg), "--sapo_tau_neg", "1.3"])
    assert (args.sapo_tau_pos, args.sapo_tau_neg, args.use_decoupled_loss) == (0.9, 1.3, False)
    help_text = parser.format_help()
    for field in ("--use_sapo_loss", "--sapo_tau_pos", "--sapo_tau_neg", "--use_decoupled_loss"):
        assert field in help_text
    defaults = SAPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert (defaults.use_sapo_loss, defaults.sapo_tau_pos, defaults.sapo_tau_neg) == (True, 1.0, 1.05)
    assert (defaults.use_decoupled_loss, defaults.loss_type) == (False, "grpo")
