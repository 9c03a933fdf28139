"""SAPOTrainer: GRPOTrainer with SAPO's soft gate in place of PPO/GRPO clipping."""

from __future__ import annotations

import dataclasses

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import get_config_model_id

from . import loss as sapo
from .config import SAPOConfig
from .reliability import ReliabilityMixin

KL_LOG_WEIGHT_MAX = 20.0
"""Cap on log r in the KL's importance weight (`use_bias_correction_kl`): r ≤ e^20 ≈ 4.9e8. Below it the KL term is
GRPOTrainer's to the bit; above it (a token 4.9e8 times likelier than when sampled: a blow-up, not drift) the weight
stays e^20 with no gradient through r, where exp(log r) · KL overflowed float32 to an inf loss (log r ≳ 88)."""


def sapo_config_from_grpo(grpo_config: GRPOConfig, **sapo_fields) -> SAPOConfig:
    """A `SAPOConfig` with every setting of `grpo_config`, plus `sapo_fields` (e.g. `sapo_tau_neg=1.05`).

    Not `SAPOConfig(**grpo_config.to_dict())`: `to_dict()` masks tokens (`hub_token` becomes "<HUB_TOKEN>") and holds
    both `generation_batch_size` and `steps_per_generation` (GRPOConfig derives one from the other; passing both is
    refused), so it always raised. `generation_batch_size` is left to be derived again from `steps_per_generation`.
    """
    kwargs = {f.name: getattr(grpo_config, f.name) for f in dataclasses.fields(grpo_config) if f.init}
    kwargs.pop("generation_batch_size")
    return SAPOConfig(**{**kwargs, **sapo_fields})


class SAPOTrainer(ReliabilityMixin, GRPOTrainer):
    """
    Trainer for Soft Adaptive Policy Optimization (SAPO, https://huggingface.co/papers/2511.20347).

    The only change w.r.t. [`trl.GRPOTrainer`] is `_compute_loss`: the per-token policy term is `-f(r) · A` with
    SAPO's gate `f(r) = 4/τ · σ(τ (r - 1))` (float32, exact log-space backward: `trl_sapo.loss`) instead of
    `-min(r A, clip(r) A)`, and `sapo/*` gate metrics (mean gate, mean gradient weight, soft-clipped share, by
    advantage sign; ratio mean and max) are logged in place of `clip_ratio/*`. Everything else in the loss
    (KL penalty, vLLM importance-sampling correction, entropy mask and bonus, off-policy sequence mask, MoE aux loss,
    aggregation for `loss_type`) is GRPOTrainer's code, mirrored verbatim, except that the KL's importance weight
    (`use_bias_correction_kl`) is capped at `exp(KL_LOG_WEIGHT_MAX)` so that `beta > 0` stays finite at extreme
    ratios. With `args.use_sapo_loss=False` the loss is GRPOTrainer's.

    Independently of the loss, [`trl_sapo.reliability.ReliabilityMixin`] is applied (as it can be to any
    GRPOTrainer): reward-function errors, buffered rollouts in checkpoints, SIGTERM checkpointing and the non-finite
    step watchdog (`save_on_sigterm`, `nonfinite_policy`).
    """

    _tag_names = ["trl", "sapo", "grpo"]
    _name = "SAPO"
    _paper = {
        "title": "Soft Adaptive Policy Optimization",
        "id": "2511.20347",
        # docstyle-ignore
        "citation": """\
@article{gao2025sapo,
    title        = {{Soft Adaptive Policy Optimization}},
    author       = {Gao and others (Qwen Team)},
    year         = 2025,
    eprint       = {arXiv:2511.20347}
}""",
    }

    def __init__(self, model, reward_funcs, args: SAPOConfig | None = None, **kwargs):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = SAPOConfig(f"{model_name.split('/')[-1]}-SAPO")
        elif not isinstance(args, SAPOConfig):
            raise TypeError(
                f"SAPOTrainer needs a trl_sapo.SAPOConfig, got {type(args).__name__}. Convert one with "
                "trl_sapo.trainer.sapo_config_from_grpo(your_grpo_config) (keyword arguments add SAPO fields, e.g. "
                "sapo_tau_pos=1.0), or use trl.GRPOTrainer."
            )
        super().__init__(model, reward_funcs, args=args, **kwargs)
        if args.use_sapo_loss and args.loss_type == "sapo":
            self.loss_type = "grpo"  # same aggregation; keeps GRPOTrainer's "grpo" branches for anything it shares

    # Mirrored from trl==1.16.0 trl/trainer/grpo_trainer.py L3020-L3290 (GRPOTrainer._compute_loss): verbatim outside
    # the `# --- SAPO: begin/end` blocks. tests/test_trl_mirror.py checks this against the installed TRL.
    def _compute_loss(self, model, inputs):
        # --- SAPO: begin (use_sapo_loss=False: GRPOTrainer's own objective, unchanged)
        if not self.args.use_sapo_loss:
            return super()._compute_loss(model, inputs)
        # --- SAPO: end
        # Compute the per-token log probabilities for the model
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)  # we only need to compute the logits for the completion tokens
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        # Compute the per_token_logps and the entropy at each position in the completion
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"),
            num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"),
            token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_position_ids=inputs.get("image_position_ids"),
        )

        if self.top_entropy_quantile < 1.0:
            entropy_mask = self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
        else:
            entropy_mask = None

        # Compute the loss
        advantages = inputs["advantages"]
        # In the base GRPO implementation, advantages are expected to have shape (B,). To support subclasses that
        # provide advantages with shape (B, T), we *conditionally* unsqueeze the tensor.
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        # When num_iterations == 1 and steps_per_generation <= gradient_accumulation_steps,
        # old_per_token_logps == per_token_logps. In this case we can skip its computation
        # (see _generate_and_score_completions) and instead use per_token_logps.detach().
        # The exception is when using vLLM, where we always compute old_per_token_logps
        # for importance sampling
        old_per_token_logps = inputs.get("old_per_token_logps")
        old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps

        if self.off_policy_mask_threshold is not None:
            # OPSM should use inference-time logprobs to detect both sources of off-policyness:
            # 1. Drift from gradient updates (always present)
            # 2. Drift from training-inference mismatch (when using vLLM)
            # When using vLLM, prioritize sampling_per_token_logps, otherwise use old_per_token_logps
            sampling_per_token_logps = inputs.get("sampling_per_token_logps", old_per_token_logps)

            off_policy_mask = self.get_off_policy_mask(
                advantages=advantages,
                per_token_logps=per_token_logps,
                sampling_per_token_logps=sampling_per_token_logps,
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )

        # --- SAPO: begin (gate and log-ratio in float32, masked positions exactly 0: trl_sapo.loss)
        terms = sapo.sapo_per_token_loss(
            per_token_logps,
            old_per_token_logps,
            advantages,
            mask,
            tau_pos=self.args.sapo_tau_pos,
            tau_neg=self.args.sapo_tau_neg,
            importance_sampling_level=self.importance_sampling_level,
        )
        log_importance_weights = terms.log_importance_weights
        # --- SAPO: end

        # --- SAPO: begin (coef_1 only weights the KL here: capped, so beta > 0 stays finite at any log r)
        coef_1 = torch.exp(log_importance_weights.clamp(max=KL_LOG_WEIGHT_MAX))
        # --- SAPO: end

        # Compute the KL divergence between the model and the reference model
        if self.beta != 0.0:
            ref_per_token_logps = inputs["ref_per_token_logps"]
            per_token_kl = (
                torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
            )
            # Importance sampling correction for the KL divergence
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * coef_1

        # From here, log_importance_weights (and all subsequent tensors, coef_1, coef_2, etc.) shape depends on
        # importance_sampling_level: "token" level: (B, T); "sequence" level: (B, 1)
        # --- SAPO: begin (the policy term -f(r)·A replaces the loss_type branches; aggregation below is unchanged)
        per_token_loss = terms.per_token_loss
        # --- SAPO: end

        if self.off_policy_mask_threshold is not None:
            per_token_loss = per_token_loss * off_policy_mask

        if entropy_mask is not None:
            per_token_loss = per_token_loss * entropy_mask

        if self.use_vllm and self.vllm_importance_sampling_correction and self.loss_type != "vespo":
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]

        if self.beta != 0.0:
            per_token_loss = per_token_loss + self.beta * per_token_kl

        mode = "train" if self.model.training else "eval"
        if self.loss_type in ["grpo", "sapo"]:
            loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
            normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0  # no accum in eval
            policy_loss = loss.detach()
            loss = loss / normalizer
        elif self.loss_type == "bnpo":
            loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
            normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0  # no accum in eval
            policy_loss = loss.detach()
            loss = loss / normalizer
        elif self.loss_type == "dr_grpo":
            loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * self.max_completion_length)
            normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0  # no accum in eval
            policy_loss = loss.detach()
            loss = loss / normalizer
        elif self.loss_type in ["cispo", "dapo", "vespo"]:
            # `num_items_in_batch` spans the generation batch, so rescale it to one accumulation window
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":  # in eval, the batch is neither split across steps nor accumulated
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            loss = (per_token_loss * mask).sum() / normalizer
            policy_loss = loss.detach()
        elif self.loss_type == "luspo":
            # `per_token_loss` is (B, 1) only in the recommended sequence-level setup; importance_sampling_level=
            # "token" (the config default), the KL term, token-level vLLM IS ratios, and the entropy mask all
            # broadcast it to (B, T), so mask before aggregating.
            loss = (per_token_loss * mask).sum(-1).mean()
            normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            policy_loss = loss.detach()
            loss = loss / normalizer
        else:
            raise ValueError(f"Unknown loss type: {self.loss_type}")

        # Entropy bonus: add entropy regularization to encourage exploration. _entropy_bonus_enabled is set
        # whenever a non-zero static coef is set OR adaptive mode is enabled (adaptive stays enabled even when
        # entropy_coef has been decremented to entropy_coef_min so it can recover once entropy drops again).
        if self._entropy_bonus_enabled:
            # When top_entropy_quantile < 1.0, entropy_mask restricts policy gradients to high-entropy
            # tokens. Use the same effective mask for the entropy bonus so it acts on the same tokens.
            effective_mask = mask if entropy_mask is None else mask * entropy_mask
            # Entropy bonus = mean per-token entropy H (the documented objective L = L_policy - coef * H), so
            # H does not depend on how each loss type normalizes its policy term. The bonus is a mean over the
            # tokens it acts on (effective_mask), scaled only for gradient accumulation, never by a loss-type-
            # specific policy normalizer. (The adaptive controller below tracks a window-global token-weighted mean,
            # which can differ from this per-micro-batch mean when token counts vary across micro-batches.)
            accumulation_factor = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            entropy_loss = (
                (entropies * effective_mask).sum() / effective_mask.sum().clamp(min=1.0) / accumulation_factor
            )

            # Apply the coefficient and gating from the end of the previous optimizer step, so that every
            # micro-batch in the current accumulation window applies the same entropy bonus. The adaptive
            # update below only takes effect on the next step.
            if self.use_adaptive_entropy:
                apply_coef = self.entropy_coef if self._last_world_entropy <= self.args.entropy_target else 0.0
            else:
                apply_coef = self.entropy_coef

            loss = loss - apply_coef * entropy_loss

            self._metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_loss).nanmean().item())

            # Adaptive update. Gated on train mode so evaluation cannot mutate the entropy controller state.
            if self.use_adaptive_entropy and mode == "train":
                # Accumulate the entropy sum and active-token count of every micro-batch into a running window
                # buffer, so the controller measures the exact window-global entropy rather than just the last
                # micro-batch (which would be a 1 / gradient_accumulation_steps subsample).
                stats = torch.stack([(entropies * effective_mask).sum(), effective_mask.sum()]).detach()
                if self._entropy_window_stats is None:
                    self._entropy_window_stats = stats
                else:
                    self._entropy_window_stats = self._entropy_window_stats + stats
                # At the optimizer-step boundary, reduce the window totals across ranks (sum and token count
                # jointly, for a true global mean unbiased when ranks have different completion lengths),
                # update the coefficient for the next step, then reset the window buffer.
                if self.accelerator.sync_gradients:
                    window_stats = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
                    world_entropy = (window_stats[0] / window_stats[1].clamp(min=1.0)).item()
                    if world_entropy <= self.args.entropy_target:
                        self.entropy_coef = min(
                            self.entropy_coef + self.args.entropy_coef_delta, self.args.entropy_coef_max
                        )
                    else:
                        self.entropy_coef = max(
                            self.entropy_coef - self.args.entropy_coef_delta, self.args.entropy_coef_min
                        )
                    self._last_world_entropy = world_entropy
                    self._entropy_window_stats = None

            # Log entropy_coef on train optimizer-step boundaries (constant for static control; updated just
            # above for adaptive control). sync_gradients is always True in eval (no accumulation context).
            if mode == "train" and self.accelerator.sync_gradients:
                self._metrics[mode]["entropy_coef"].append(self.entropy_coef)

        # The policy loss above is scaled for gradient accumulation (HF auto-scaling is off here), so scale aux too
        if self.aux_loss_enabled:
            normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        # Log the metrics
        def masked_seq_mean(x):
            if x.shape[1] == 1:  # when importance_sampling_level == "sequence": already one value per sequence
                return x.squeeze(1)
            return (x * mask).sum(-1) / mask.sum(-1)

        def global_masked_mean(x):
            if x.shape[1] == 1:  # when importance_sampling_level == "sequence": one value per sequence
                local_sum, local_count = x.sum(), torch.tensor(float(x.shape[0]), device=x.device)
            else:
                local_sum, local_count = (x * mask).sum(), mask.sum().float()
            totals = self.accelerator.reduce(torch.stack([local_sum, local_count]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        if self.beta != 0.0:
            self._metrics[mode]["kl"].append(global_masked_mean(per_token_kl))

        self._metrics[mode]["entropy"].append(global_masked_mean(entropies))

        # --- SAPO: begin (sapo/* gate metrics in place of clip_ratio/*)
        self._log_sapo_diagnostics(terms, advantages, mask, mode)
        # --- SAPO: end

        return loss

    def _log_sapo_diagnostics(self, terms: sapo.SapoTerms, advantages, mask, mode: str) -> None:
        """Append `sapo/*` metrics, reduced over processes (sums and counts summed; the max maxed)."""
        stats = sapo.diagnostics(terms.log_importance_weights, terms.tau, advantages, mask)
        ratio_max = stats.pop("ratio_max")[0]
        names = list(stats)
        local = torch.stack([torch.stack(stats[name]) for name in names])  # (n_metrics, 2)
        totals = self.accelerator.reduce(local, reduction="sum")
        for name, (total, count) in zip(names, totals.tolist()):
            # A split with no tokens anywhere (e.g. no A > 0 in this batch) logs NaN, which the logger's nanmean skips.
            self._metrics[mode][f"sapo/{name}"].append(total / count if count > 0 else float("nan"))
        self._metrics[mode]["sapo/ratio_max"].append(self.accelerator.gather(ratio_max.reshape(1)).max().item())
