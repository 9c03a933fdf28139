"""SAPOTrainer: GRPOTrainer with SAPO's soft gate in place of PPO/GRPO clipping."""

from __future__ import annotations

import torch
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

from . import loss as sapo
from . import reliability
from .config import SAPOConfig


class SAPOTrainer(GRPOTrainer):
    """
    Trainer for Soft Adaptive Policy Optimization (SAPO, https://huggingface.co/papers/2511.20347).

    The only change w.r.t. [`trl.GRPOTrainer`] is the policy term of the loss: `-f(r) · A` with SAPO's gate
    `f(r) = 4/τ · σ(τ (r - 1))` (see `trl_sapo.loss`) instead of `-min(r A, clip(r) A)`. Generation, rewards,
    advantages, the KL penalty, vLLM importance-sampling correction, entropy masking and bonus, the off-policy
    sequence mask, MoE aux loss and the loss aggregation for `loss_type` are GRPOTrainer's, unchanged. With
    `args.use_sapo_loss=False` the trainer is exactly GRPOTrainer.

    It logs `sapo/*` gate diagnostics (mean gate, mean gradient weight, soft-clipped share, by advantage sign; ratio
    mean and max) in place of GRPO's `clip_ratio/*`.
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
                f"SAPOTrainer needs a trl_sapo.SAPOConfig, got {type(args).__name__}. Build one with "
                "SAPOConfig(**your_grpo_config.to_dict()) or use trl.GRPOTrainer."
            )
        super().__init__(model, reward_funcs, args=args, **kwargs)
        if args.use_sapo_loss and args.loss_type == "sapo":
            self.loss_type = "grpo"  # same aggregation; keeps GRPOTrainer's "grpo" branches for anything it shares
        # Reliability (see trl_sapo/reliability.py): reward errors, rollouts in checkpoints, SIGTERM, NaN steps.
        self._reward_guard = reliability.guard_reward_funcs(self)
        self._watchdog = reliability.NonFiniteWatchdog(self, args.nonfinite_policy)
        self._preemption = reliability.PreemptionCallback(self) if args.save_on_sigterm else None
        for callback in (self._watchdog, self._preemption):
            if callback is not None:
                self.add_callback(callback)

    # -- Reliability hooks: thin adapters, the logic is in trl_sapo/reliability.py ----------------------------------
    def train(self, *args, **kwargs):
        try:
            output = super().train(*args, **kwargs)
        finally:
            if self._preemption is not None:
                self._preemption.uninstall()  # also when train() raises: restore the previous SIGTERM handler
        if self._preemption is not None and self._preemption.preempted:
            reliability.logger.warning(
                f"Stopped by SIGTERM after saving checkpoint-{self.state.global_step}; exiting with status "
                f"{reliability.PREEMPTED_EXIT_CODE}. Resume with resume_from_checkpoint=True."
            )
            raise SystemExit(reliability.PREEMPTED_EXIT_CODE)
        return output

    def training_step(self, model, inputs, num_items_in_batch):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._watchdog.observe_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._watchdog.before_optimizer_step(grad_norm)
        return grad_norm

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._reward_guard.raise_if_failed(self.accelerator)  # all ranks together, after TRL's gather
        return rewards_per_func

    def _save_checkpoint(self, model, trial):
        if not self.args.save_only_model:  # written first: a checkpoint with trainer_state.json is complete
            extra = {"nonfinite_steps": self._watchdog.count}
            reliability.save_rollout_state(self, reliability.checkpoint_dir(self, trial), extra)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and (state := reliability.load_rollout_state(self, checkpoint)) is not None:
            self._watchdog.count = state.get("nonfinite_steps", 0)

    def log(self, logs, start_time=None):
        super().log(self._watchdog.add_to_logs(logs) if self.model.training else logs, start_time)

    def _compute_loss(self, model, inputs):
        if not self.args.use_sapo_loss:
            return super()._compute_loss(model, inputs)

        # -- Same inputs as GRPOTrainer._compute_loss (trl 1.16) ------------------------------------------------
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in _MULTIMODAL_KEYS},
        )
        entropy_mask = (
            self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
            if self.top_entropy_quantile < 1.0
            else None
        )
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        # None when old == current policy (num_iterations == 1 and no buffered steps): GRPOTrainer skips computing it.
        old_per_token_logps = inputs.get("old_per_token_logps")
        if old_per_token_logps is None:
            old_per_token_logps = per_token_logps.detach()

        # -- SAPO's policy term: the only change ---------------------------------------------------------------
        terms = sapo.sapo_per_token_loss(
            per_token_logps,
            old_per_token_logps,
            advantages,
            mask,
            tau_pos=self.args.sapo_tau_pos,
            tau_neg=self.args.sapo_tau_neg,
            importance_sampling_level=self.importance_sampling_level,
        )
        per_token_loss = terms.per_token_loss

        # -- GRPOTrainer's modifiers, unchanged ----------------------------------------------------------------
        if self.off_policy_mask_threshold is not None:
            per_token_loss = per_token_loss * self.get_off_policy_mask(
                advantages=advantages,
                per_token_logps=per_token_logps,
                sampling_per_token_logps=inputs.get("sampling_per_token_logps", old_per_token_logps),
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )
        if entropy_mask is not None:
            per_token_loss = per_token_loss * entropy_mask
        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            ref_per_token_logps = inputs["ref_per_token_logps"]
            per_token_kl = (
                torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
            )
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(terms.log_importance_weights)
            per_token_loss = per_token_loss + self.beta * per_token_kl

        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        num_items = None
        if self.loss_type == "dapo":
            # `num_items_in_batch` spans the generation batch: rescale it to one accumulation window on this process
            num_items = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                num_items = num_items * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        loss = sapo.aggregate(per_token_loss, mask, self.loss_type, self.max_completion_length, num_items)
        policy_loss = loss.detach()
        if self.loss_type != "dapo":  # dapo's normalizer already covers the accumulation window
            loss = loss / accumulation

        loss = self._add_entropy_bonus(loss, policy_loss, entropies, mask, entropy_mask, mode, accumulation)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        # -- Metrics: GRPOTrainer's kl/entropy, plus sapo/* in place of clip_ratio/* -----------------------------
        if self.beta != 0.0:
            self._metrics[mode]["kl"].append(self._global_masked_mean(per_token_kl, mask))
        self._metrics[mode]["entropy"].append(self._global_masked_mean(entropies, mask))
        self._log_sapo_diagnostics(terms, advantages, mask, mode)
        return loss

    # GRPOTrainer computes the entropy bonus inline in `_compute_loss`; this follows it line by line (trl 1.16).
    def _add_entropy_bonus(self, loss, policy_loss, entropies, mask, entropy_mask, mode, accumulation):
        """L = L_policy - coef · H with GRPOTrainer's static or adaptive coefficient (and its metrics)."""
        if not self._entropy_bonus_enabled:
            return loss
        effective_mask = mask if entropy_mask is None else mask * entropy_mask
        entropy_loss = (entropies * effective_mask).sum() / effective_mask.sum().clamp(min=1.0) / accumulation
        if self.use_adaptive_entropy:
            apply_coef = self.entropy_coef if self._last_world_entropy <= self.args.entropy_target else 0.0
        else:
            apply_coef = self.entropy_coef
        loss = loss - apply_coef * entropy_loss
        self._metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_loss).nanmean().item())
        if self.use_adaptive_entropy and mode == "train":
            stats = torch.stack([(entropies * effective_mask).sum(), effective_mask.sum()]).detach()
            self._entropy_window_stats = (
                stats if self._entropy_window_stats is None else self._entropy_window_stats + stats
            )
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
        if mode == "train" and self.accelerator.sync_gradients:
            self._metrics[mode]["entropy_coef"].append(self.entropy_coef)
        return loss

    def _global_masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        """Token-weighted mean over all processes ((B, 1) inputs: sequence-weighted), as GRPOTrainer logs."""
        if x.shape[1] == 1:
            local = torch.stack([x.sum(), torch.tensor(float(x.shape[0]), device=x.device)])
        else:
            local = torch.stack([(x * mask).sum(), mask.sum().float()])
        totals = self.accelerator.reduce(local.float(), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

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


_MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)
