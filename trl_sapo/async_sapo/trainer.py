"""AsyncSAPOTrainer: TRL 1.16's AsyncGRPOTrainer with SAPO's soft gate, a CPU path and a transformers rollout worker."""

from __future__ import annotations

import json
import os
import time

import torch
from transformers import AutoTokenizer, GenerationConfig
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl.experimental.async_grpo import AsyncGRPOTrainer
from trl.experimental.async_grpo.async_grpo_trainer import nanmax, nanmin  # names the mirrored code uses

from .. import loss as sapo
from ..checkpoints import CheckpointCompletionCallback
from ..reliability.nonfinite import NonFiniteWatchdog
from ..reliability.preemption import PreemptionCallback
from ..trainer import SAPOTrainer
from .config import AsyncSAPOConfig
from .cpu import enable_cpu_support
from .worker import LocalWeightTransfer, TransformersRolloutWorker

logger = logging.get_logger(__name__)

CLIP_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
CLIP_METRICS += ("clip_ratio/low_min", "clip_ratio/high_max")
STATE_NAME = "async_sapo_state.json"
"""Checkpoint file of the transformers worker's resume state: prompt cursor, policy version, non-finite steps."""


class AsyncSAPOTrainer(AsyncGRPOTrainer):
    """
    SAPO (https://huggingface.co/papers/2511.20347) on asynchronous, stale rollouts: TRL's `AsyncGRPOTrainer` with
    only the loss changed. `compute_loss` is TRL's, mirrored verbatim outside `# --- SAPO` blocks
    (tests/test_async_mirror.py): the per-token term is `-f(r) · A` with `r = π_θ / π_behaviour` (the generator's
    sampling log-probs, never recomputed), aggregated per `loss_type` (`"grpo"`: token mean per sequence then over
    sequences; `"bnpo"`: TRL's global token mean), and `sapo/*` metrics replace `clip_ratio/*`. With
    `use_sapo_loss=False` the clipped objective runs (TRL's own `compute_loss` for `"bnpo"`).

    Also: `rollout_backend="transformers"` builds a `TransformersRolloutWorker` + `LocalWeightTransfer` (no vLLM;
    `fixed_lag` for reproducible staleness); off CUDA the tree attention and peak-FLOPs lookup get plain-torch paths
    (`trl_sapo.async_sapo.cpu`); SIGTERM saves a checkpoint and stops (`save_on_sigterm`), non-finite steps are
    skipped or raise (`nonfinite_policy`), reward-function errors stop the run (`RewardFunctionError`, raised in the
    worker and surfaced by the trainer); resume restores the worker's prompt cursor and the policy version.

    Lag metrics: `sample/staleness_mean`, `sample/staleness_max` (policy versions between the sample's generator and
    the trainer), `sample/dropped_stale_total` and `sample/dropped_stale_share` (dropped past `max_staleness`). On
    one process they are read when the micro-batch is trained; with several, accelerate's dispatcher fetches one
    micro-batch ahead, so they are read one micro-batch early and the lag trained on can exceed them by one.
    """

    _tag_names = ["trl", "sapo", "async-grpo"]
    _name = "AsyncSAPO"
    _paper = SAPOTrainer._paper

    def __init__(
        self,
        model: str,
        reward_funcs=None,
        args: AsyncSAPOConfig | None = None,
        train_dataset=None,
        processing_class=None,
        rollout_worker=None,
        weight_transfer=None,
        **kwargs,
    ):
        if args is None:
            args = AsyncSAPOConfig(f"{str(model).rstrip('/').split('/')[-1]}-AsyncSAPO")
        elif not isinstance(args, AsyncSAPOConfig):
            raise TypeError(
                f"AsyncSAPOTrainer needs a trl_sapo.AsyncSAPOConfig, got {type(args).__name__}. Build one with "
                "AsyncSAPOConfig(**your_config.to_dict()) or use trl's AsyncGRPOTrainer."
            )
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("AsyncSAPOTrainer (like TRL's AsyncGRPOTrainer) takes the model as a path or hub id.")
        model = str(model)
        enable_cpu_support()
        if args.rollout_backend == "transformers" and rollout_worker is None and args.process_index == 0:
            for name in ("tools", "environment_factory"):
                if kwargs.get(name) is not None:
                    raise ValueError(f"`{name}` needs TRL's vLLM rollout worker (rollout_backend='vllm').")
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(model, trust_remote_code=args.trust_remote_code)
            if processing_class.pad_token is None:
                processing_class.pad_token = processing_class.eos_token
            if train_dataset is None:
                raise ValueError("The transformers rollout worker needs a `train_dataset` with a 'prompt' column.")
            rollout_worker = self._transformers_worker(model, args, processing_class, train_dataset, reward_funcs)
            weight_transfer = weight_transfer or LocalWeightTransfer(rollout_worker)
        if args.token_budget is None and args.rollout_backend != "vllm":
            args.token_budget = -1  # no vLLM server to ask for max_model_len: fixed-count micro-batches
            logger.info("token_budget unset without vLLM: micro-batches hold per_device_train_batch_size samples.")
        self.loss_type = args.loss_type
        super().__init__(
            model, reward_funcs, args=args, train_dataset=train_dataset, processing_class=processing_class,
            rollout_worker=rollout_worker, weight_transfer=weight_transfer, **kwargs,
        )  # fmt: skip
        self._watchdog = NonFiniteWatchdog(self, args.nonfinite_policy)
        self._preemption = PreemptionCallback(self) if args.save_on_sigterm else None
        for callback in (self._watchdog, self._preemption):
            if callback is not None:
                self.add_callback(callback)
        # checkpoint_complete.json after every save, as SAPOTrainer writes: the entry points' resume needs it
        self.add_callback(CheckpointCompletionCallback(self._preemption))

    @staticmethod
    def _transformers_worker(model, args, tokenizer, dataset, reward_funcs) -> TransformersRolloutWorker:
        try:
            eos = GenerationConfig.from_pretrained(model).eos_token_id
        except OSError:
            eos = None
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        return TransformersRolloutWorker(
            model, tokenizer, dataset,
            reward_funcs if isinstance(reward_funcs, list) else [reward_funcs] if reward_funcs else [],
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            samples_per_microbatch=args.per_device_train_batch_size * args.world_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or 0,
            fixed_lag=args.fixed_lag,
            eos_token_ids=sorted({tokenizer.eos_token_id, *eos}),
            queue_maxsize=args.queue_maxsize,
            dtype=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32,
            device="cpu" if args.use_cpu or not torch.cuda.is_available() else "cuda",
            seed=args.seed,
        )  # fmt: skip

    def get_train_dataloader(self):
        if self.accelerator.num_processes > 1:
            return super().get_train_dataloader()
        # One process needs no dispatching, and accelerate's DataLoaderDispatcher fetches micro-batch i+1 before it
        # yields micro-batch i: every sample would be generated at least one policy version before it is trained
        # (lag 0 impossible) and staleness would be checked a micro-batch early. Keep TRL's DataLoader unprepared.
        prepare = self.accelerator.prepare
        self.accelerator.prepare = lambda loader: loader
        try:
            return super().get_train_dataloader()
        finally:
            self.accelerator.prepare = prepare

    # Mirrored from trl==1.16.0 trl/experimental/async_grpo/async_grpo_trainer.py L1497-L1625
    # (AsyncGRPOTrainer.compute_loss): verbatim outside the `# --- SAPO: begin/end` blocks.
    # tests/test_async_mirror.py checks this against the installed TRL.
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # --- SAPO: begin (use_sapo_loss=False with loss_type='bnpo' is AsyncGRPOTrainer's loss: call it unchanged)
        if not self.args.use_sapo_loss and self.loss_type == "bnpo":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # --- SAPO: end
        mask_bool = inputs["attention_mask"].bool()
        selected = inputs["token_index"] >= 0
        input_ids = inputs["input_ids"][mask_bool].unsqueeze(0)
        position_ids = inputs["position_ids"][mask_bool].unsqueeze(0)
        shift_labels = inputs["shift_labels"][mask_bool].unsqueeze(0)
        token_index = inputs["token_index"][selected]
        old_log_probs = inputs["old_log_probs"][selected]
        advantages = inputs["advantages"][selected]
        segment_id = inputs["segment_id"][selected]
        tree_kwargs = {
            key: inputs[key][inputs[key] >= 0] for key in ("tree_kv_index", "tree_cu_seqlens_q", "tree_cu_seqlens_k")
        }
        tree_kwargs["tree_max_seqlen_q"], tree_kwargs["tree_max_seqlen_k"] = inputs["tree_max_seqlens"][0].tolist()

        forward_start = time.time()
        # MoE models: request router logits so the forward returns the load-balancing loss
        router_kwargs = {"output_router_logits": True} if self.aux_loss_enabled else {}
        outputs = model(
            input_ids=input_ids,
            position_ids=position_ids,
            shift_labels=shift_labels,
            fused_lm_head=True,
            **router_kwargs,
            **tree_kwargs,
        )
        log_probs = outputs.log_probs.flatten()[token_index]
        entropy = outputs.entropy.flatten()[token_index]
        self._last_forward_time_s = time.time() - forward_start

        log_ratio = log_probs - old_log_probs
        coef_1 = torch.exp(log_ratio)
        # --- SAPO: begin (the gate -f(r)·A in float32 with an exact backward (trl_sapo.loss), or TRL's clip)
        if self.args.use_sapo_loss:
            terms = sapo.sapo_per_token_loss(
                log_probs[None], old_log_probs[None], advantages[None], torch.ones_like(log_probs[None]),
                tau_pos=self.args.sapo_tau_pos, tau_neg=self.args.sapo_tau_neg,
            )  # fmt: skip
            per_token_loss = terms.per_token_loss[0]
        else:
            coef_2 = torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_high)
            per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
        # --- SAPO: end

        # DDP/FSDP averages gradients across ranks (world_size).
        # To get correct per-token normalization we scale by 1/tokens_per_rank
        # = world_size / global_n_tokens, so after DDP averaging the effective
        loss = per_token_loss.sum()
        global_n_tokens = inputs["global_n_tokens"][0]
        world_size = self.accelerator.num_processes
        tokens_per_rank = (global_n_tokens / world_size).clamp(min=1.0)
        loss = loss / tokens_per_rank.to(torch.float32)
        # --- SAPO: begin (loss_type='grpo': token mean per sequence, then mean over the micro-batch's sequences)
        if self.loss_type == "grpo":
            loss = self._sequence_mean_loss(per_token_loss, segment_id, inputs)
        # --- SAPO: end
        # For DAPO, we would scale like this instead:
        # loss = loss / max(per_token_loss.size(0), 1)
        loss = loss / self.current_gradient_accumulation_steps

        # The policy loss above is scaled for gradient accumulation (HF auto-scaling is off here), so scale aux too
        if self.aux_loss_enabled:
            aux_loss = outputs.aux_loss
            loss = loss + self.router_aux_loss_coef * aux_loss / self.current_gradient_accumulation_steps

        with torch.no_grad():
            local_ratio_sum = coef_1.sum()
            local_count = torch.full_like(local_ratio_sum, float(log_probs.numel()))
            # Approx KL: http://joschu.net/blog/kl-approx.html
            local_kl_sum = ((coef_1 - 1) - log_ratio).sum()
            local_entropy_sum = entropy.sum()

            # Compute the clipped probability ratios
            is_low_clipped = (coef_1 < 1 - self.epsilon_low) & (advantages < 0)
            is_high_clipped = (coef_1 > 1 + self.epsilon_high) & (advantages > 0)
            is_region_clipped = is_low_clipped | is_high_clipped
            local_low_clip_sum = is_low_clipped.float().sum()
            local_high_clip_sum = is_high_clipped.float().sum()
            local_region_clip_sum = is_region_clipped.float().sum()

            # Batch all-reduce: [ratio_sum, kl_sum, entropy_sum, low_clip_sum, high_clip_sum, region_clip_sum, count]
            stats = torch.stack(
                [
                    local_ratio_sum,
                    local_kl_sum,
                    local_entropy_sum,
                    local_low_clip_sum,
                    local_high_clip_sum,
                    local_region_clip_sum,
                    local_count,
                ]
            )
            stats = self.accelerator.reduce(stats, reduction="sum")
            (
                global_ratio_sum,
                global_kl_sum,
                global_entropy_sum,
                global_low_clip_sum,
                global_high_clip_sum,
                global_region_clip_sum,
                global_count,
            ) = stats.unbind(0)
            self._metrics["train"]["ratio"].append((global_ratio_sum / global_count).item())
            self._metrics["train"]["kl"].append((global_kl_sum / global_count).item())
            self._metrics["train"]["entropy"].append((global_entropy_sum / global_count).item())
            self._metrics["train"]["clip_ratio/low_mean"].append((global_low_clip_sum / global_count).item())
            self._metrics["train"]["clip_ratio/high_mean"].append((global_high_clip_sum / global_count).item())
            self._metrics["train"]["clip_ratio/region_mean"].append((global_region_clip_sum / global_count).item())

            num_seq = int(segment_id.max()) + 1  # completions in this rank's row

            def seg_sum(vals):  # per-completion segment sum over the flat selection
                return torch.zeros(num_seq, device=vals.device).index_add_(0, segment_id, vals)

            seq_tokens = seg_sum(torch.ones_like(coef_1, dtype=torch.float32))
            seq_low = seg_sum(is_low_clipped.float())
            seq_high = seg_sum(is_high_clipped.float())
            per_seq_low = seq_low / seq_tokens  # NaN for a completion with no valid tokens; ignored by nan-aware min
            per_seq_high = seq_high / seq_tokens
            gathered_low_min = self.accelerator.gather(nanmin(per_seq_low))
            gathered_high_max = self.accelerator.gather(nanmax(per_seq_high))
            self._metrics["train"]["clip_ratio/low_min"].append(nanmin(gathered_low_min).item())
            self._metrics["train"]["clip_ratio/high_max"].append(nanmax(gathered_high_max).item())
            # --- SAPO: begin (under the gate, sapo/* replace clip_ratio/*, which describe a clip not applied)
            if self.args.use_sapo_loss:
                self._drop_last_clip_metrics()
                SAPOTrainer._log_sapo_diagnostics(self, terms, advantages[None], torch.ones_like(terms.tau), "train")
            # --- SAPO: end

            if self.aux_loss_enabled:
                gathered_aux = self.accelerator.reduce(aux_loss.detach().to(torch.float32), reduction="sum")
                self._metrics["train"]["aux_loss"].append((gathered_aux / world_size).item())

        # Per-step accounting, accumulated across the micro-batches of one optimizer step and flushed in
        # `training_step`. The counts are batch-wide (the collator broadcasts one value per rank), so they are read off
        # rank-local inputs without a collective. Sample rewards and packing metrics are NOT gathered here — rank 0
        # already logged them in the collator.
        n_forward_tokens = float(inputs["global_n_forward_tokens"][0])
        mean_seq_len = float(inputs["mean_seq_len"][0])
        self._step_forward_tokens += n_forward_tokens
        self._step_trained_tokens += float(global_n_tokens)
        self._step_seq_len_weighted += mean_seq_len * n_forward_tokens
        self._step_samples += n_forward_tokens / mean_seq_len
        self._step_forward_s += self._last_forward_time_s
        return loss

    def _drop_last_clip_metrics(self) -> None:
        for name in CLIP_METRICS:
            values = self._metrics["train"][name]
            values.pop()
            if not values:
                del self._metrics["train"][name]  # an empty key would be logged as None

    def _sequence_mean_loss(self, per_token_loss, segment_id, inputs) -> torch.Tensor:
        """Σ of this rank's per-sequence token means / (sequences in the micro-batch on all ranks / world size):
        after DDP's gradient averaging, the mean over every sequence of the micro-batch. (M,) float -> scalar."""
        num_seq = int(segment_id.max()) + 1
        zeros = torch.zeros(num_seq, dtype=per_token_loss.dtype, device=per_token_loss.device)
        seq_sum = zeros.index_add(0, segment_id, per_token_loss)
        seq_len = zeros.index_add(0, segment_id, torch.ones_like(per_token_loss))
        # the collator sets mean_seq_len = forwarded tokens / samples, so this ratio is the global sample count
        global_seqs = torch.round(inputs["global_n_forward_tokens"][0] / inputs["mean_seq_len"][0])
        seqs_per_rank = (global_seqs / self.accelerator.num_processes).clamp(min=1.0)
        return (seq_sum / seq_len.clamp(min=1.0)).sum() / seqs_per_rank.to(per_token_loss.dtype)

    def training_step(self, model, inputs, num_items_in_batch):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._watchdog.observe_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):  # see trl_sapo.reliability.mixin.PRIVATE_OVERRIDES
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._watchdog.before_optimizer_step(grad_norm)
        return grad_norm

    @property
    def preempted(self) -> bool:
        """True after `train()` stopped because of SIGTERM (its checkpoint is saved)."""
        return self._preemption is not None and self._preemption.preempted

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._preemption is not None:
                self._preemption.uninstall()

    def log(self, logs, start_time=None):
        metrics = self._metrics["train"]
        dropped = sum(metrics.get("sample/dropped_stale_total", []))
        trained = sum(metrics.get("batch/samples_per_step", []))
        if dropped + trained > 0:
            metrics["sample/dropped_stale_share"] = [dropped / (dropped + trained)]
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        if self.accelerator.is_main_process and isinstance(self.rollout_worker, TransformersRolloutWorker):
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            start = self._worker_start_index
            first_untrained = next(g for g in range(start, start + len(self._trained_groups) + 1)
                                   if g not in self._trained_groups)  # fmt: skip
            state = {"prompt_index": first_untrained, "model_version": self.model_version,
                     "nonfinite_steps": self._watchdog.count}  # fmt: skip
            with open(os.path.join(folder, STATE_NAME), "w") as f:
                json.dump(state, f)
        super()._save_checkpoint(model, trial)

    def _inner_training_loop(self, *args, **kwargs):
        worker = self.rollout_worker
        if isinstance(worker, TransformersRolloutWorker):
            self._worker_start_index = worker.prompt_index = 0
            self._groups_before_resume = 0
            checkpoint = kwargs.get("resume_from_checkpoint")
            state_file = os.path.join(checkpoint, STATE_NAME) if checkpoint else None
            if state_file and os.path.isfile(state_file):
                with open(state_file) as f:
                    state = json.load(f)
                self._worker_start_index = worker.prompt_index = state["prompt_index"]
                self._groups_before_resume = state["prompt_index"]
                self.model_version = state["model_version"]
                self._watchdog.count = state["nonfinite_steps"]
                worker.update_model_version(self.model_version)
            elif checkpoint:
                raise FileNotFoundError(f"{checkpoint} has no {STATE_NAME}: not saved by AsyncSAPOTrainer.")
        return super()._inner_training_loop(*args, **kwargs)
