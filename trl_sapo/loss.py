"""SAPO's soft gate as pure tensor functions: tensors in, tensors out, no trainer state.

Notation (shapes: B sequences, T completion tokens):

    log_ratio  = logπ_θ − logπ_old                    (B, T)  per token, or (B, 1) at sequence level
    r          = exp(log_ratio)
    τ          = tau_pos where A > 0, tau_neg where A ≤ 0
    z          = τ · (r − 1)
    gate f(r)  = (4/τ) · σ(z)                         in (0, 4/τ]; f(1) = 2/τ
    weight w   = ∂f/∂log_ratio = 4 · σ(z) · σ(−z) · r   w(1) = 1: on-policy SAPO is the plain policy gradient
    loss       = −f(r) · A, aggregated over tokens and sequences by the caller

Everything is computed in float32 whatever the input dtype. The gate has a hand-written backward that evaluates w
in log space, log w = log 4 + logσ(z) + logσ(−z) + log_ratio, so the gradient is finite (and correct) for every
finite log-ratio. The naive autograd graph, σ(τ(exp(x) − 1)), returns 0 · inf = NaN once exp overflows
(x ≳ 88.7 in float32) and flushes w to 0 once σ(z) rounds to 1 (z ≳ 17).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG4 = math.log(4.0)
SOFT_CLIP_THRESHOLD = 0.5
"""A token counts as soft-clipped when its gradient weight w drops below this (w = 1 on-policy)."""


def _as_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def gate_value(log_ratio: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """f = (4/τ) · σ(τ(r − 1)) without autograd bookkeeping; exp overflow to inf is harmless (σ(inf) = 1)."""
    log_ratio = _as_float32(log_ratio)
    return torch.sigmoid(tau * torch.expm1(log_ratio)) * (4.0 / tau)


def gradient_weight(log_ratio: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """w = ∂f/∂log_ratio = 4 σ(z) σ(−z) r with z = τ(r − 1), evaluated in log space: finite, in [0, max w]."""
    log_ratio = _as_float32(log_ratio)
    z = tau * torch.expm1(log_ratio)
    log_w = LOG4 + torch.nn.functional.logsigmoid(z) + torch.nn.functional.logsigmoid(-z) + log_ratio
    # z = +inf gives logsigmoid(-z) = -inf and log_ratio = +inf only for log_ratio = +inf, which callers mask out.
    return torch.exp(log_w)


class _SoftGate(torch.autograd.Function):
    """f(log_ratio) with the exact, overflow-free derivative w. Saves only log_ratio and τ for backward."""

    @staticmethod
    def forward(ctx, log_ratio: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(log_ratio, tau)
        return gate_value(log_ratio, tau)

    @staticmethod
    def backward(ctx, grad_gate: torch.Tensor):
        log_ratio, tau = ctx.saved_tensors
        grad_log_ratio = grad_gate * gradient_weight(log_ratio, tau)
        return grad_log_ratio, None


def soft_gate(log_ratio: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Differentiable SAPO gate f(r) in float32. ``tau`` broadcasts against ``log_ratio``."""
    log_ratio = _as_float32(log_ratio)
    tau = torch.as_tensor(tau, dtype=torch.float32, device=log_ratio.device).expand_as(log_ratio)
    return _SoftGate.apply(log_ratio, tau)


def temperatures(advantages: torch.Tensor, tau_pos: float, tau_neg: float) -> torch.Tensor:
    """τ per sequence (or token): ``tau_pos`` where A > 0, ``tau_neg`` where A ≤ 0. Float32, shape of advantages."""
    return torch.where(advantages > 0, float(tau_pos), float(tau_neg)).to(torch.float32)


def masked_log_ratio(
    per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """(B, T) float32 log-ratio with masked-out positions set to exactly 0 (old log-probs there may be ±inf)."""
    log_ratio = _as_float32(per_token_logps) - _as_float32(old_per_token_logps)
    return torch.where(mask.bool(), log_ratio, torch.zeros((), dtype=log_ratio.dtype, device=log_ratio.device))


def sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 1) mean token log-ratio per sequence: the log of the geometric mean ratio (GSPO's sequence level)."""
    mask = mask.to(log_ratio.dtype)
    return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)


@dataclass
class SapoTerms:
    """What :func:`sapo_per_token_loss` returns. (B, T) or, at sequence level, (B, 1) tensors, float32."""

    per_token_loss: torch.Tensor
    """−f(r) · A, differentiable w.r.t. the current log-probs."""
    log_importance_weights: torch.Tensor
    """log r actually gated: the token log-ratio, or the sequence mean (B, 1). Differentiable (KL bias correction)."""
    tau: torch.Tensor
    """τ used for each entry."""


def sapo_per_token_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    importance_sampling_level: str = "token",
) -> SapoTerms:
    """SAPO's per-token policy loss −f(r)·A before aggregation.

    Args:
        per_token_logps: (B, T) current-policy log-probs of the sampled tokens (any float dtype; with grad).
        old_per_token_logps: (B, T) behaviour-policy log-probs; may be ±inf where ``mask`` is 0.
        advantages: (B,), (B, 1) or (B, T) advantages.
        mask: (B, T) 1 for completion tokens that count, 0 for padding / tool output.
        tau_pos, tau_neg: gate temperatures for A > 0 and A ≤ 0.
        importance_sampling_level: "token" gates each token's ratio; "sequence" gates the geometric-mean ratio.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    advantages = _as_float32(advantages)
    log_ratio = masked_log_ratio(per_token_logps, old_per_token_logps, mask)
    if importance_sampling_level == "token":
        log_weights = log_ratio
    elif importance_sampling_level == "sequence":
        log_weights = sequence_log_ratio(log_ratio, mask)
    else:
        raise ValueError(
            f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}."
        )
    tau = temperatures(advantages, tau_pos, tau_neg)
    shape = torch.broadcast_shapes(log_weights.shape, tau.shape)
    log_weights, tau = log_weights.expand(shape), tau.expand(shape)
    gate = soft_gate(log_weights, tau)
    return SapoTerms(per_token_loss=-gate * advantages, log_importance_weights=log_weights, tau=tau)


def aggregate(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) or (B, 1) per-token loss to a scalar the way GRPOTrainer does for ``loss_type``.

    ``grpo``/``sapo``: mean over each sequence's tokens, then over sequences (the SAPO paper's choice).
    ``bnpo``: mean over all tokens of the batch. ``dr_grpo``: sum / (B · max_completion_length).
    ``dapo``: sum / num_items_in_batch (tokens in the accumulation window on this process, computed by the caller).
    ``luspo``: per-sequence token sum, then mean over sequences.
    """
    mask = mask.to(per_token_loss.dtype)
    if loss_type in ("grpo", "sapo"):
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length.")
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    if loss_type == "dapo":
        if num_items_in_batch is None:
            raise ValueError("loss_type='dapo' needs num_items_in_batch.")
        return (per_token_loss * mask).sum() / num_items_in_batch
    if loss_type == "luspo":
        return (per_token_loss * mask).sum(-1).mean()
    raise ValueError(f"loss_type {loss_type!r} cannot aggregate the SAPO gate.")


def sapo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    importance_sampling_level: str = "token",
) -> torch.Tensor:
    """Scalar SAPO loss with the paper's aggregation (token mean per sequence, then sequence mean)."""
    terms = sapo_per_token_loss(
        per_token_logps, old_per_token_logps, advantages, mask, tau_pos, tau_neg, importance_sampling_level
    )
    return aggregate(terms.per_token_loss, mask, "grpo")


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float = 0.2, epsilon_high: float | None = None
) -> torch.Tensor:
    """PPO/GRPO's clipped objective min(r·A, clip(r, 1−ε_low, 1+ε_high)·A) (to maximise), for comparisons/plots."""
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    return torch.min(ratio * advantages, clipped * advantages)


def diagnostics(
    log_importance_weights: torch.Tensor, tau: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-process sums and counts of the gate statistics, to be reduced across processes by the caller.

    Returns ``{name: (sum, count)}`` scalar float32 tensors (``ratio_max`` is ``(max, 1)``). At token level the
    counts are masked tokens; at sequence level ((B, 1) weights) they are sequences, as in GRPOTrainer's metrics.
    Names: ``gate_mean``, ``grad_weight_mean``, ``soft_clip_ratio`` (share of w < 0.5), each also ``_pos``/``_neg``
    by advantage sign (A > 0 / A ≤ 0), plus ``ratio_mean`` and ``ratio_max``.
    """
    with torch.no_grad():
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        lw = log_importance_weights.detach().float()
        if lw.shape[-1] == 1:  # sequence level: one value per sequence
            weight = torch.ones_like(lw)
        else:
            weight = mask.to(torch.float32)
        gate = gate_value(lw, tau)
        w = gradient_weight(lw, tau)
        ratio = torch.exp(lw)
        soft_clipped = (w < SOFT_CLIP_THRESHOLD).float()
        positive = (advantages > 0).float().expand_as(weight)
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for suffix, sel in (("", weight), ("_pos", weight * positive), ("_neg", weight * (1 - positive))):
            count = sel.sum()
            out[f"gate_mean{suffix}"] = ((gate * sel).sum(), count)
            out[f"grad_weight_mean{suffix}"] = ((w * sel).sum(), count)
            out[f"soft_clip_ratio{suffix}"] = ((soft_clipped * sel).sum(), count)
        out["ratio_mean"] = ((ratio * weight).sum(), weight.sum())
        masked_ratio = torch.where(weight > 0, ratio, torch.full_like(ratio, -torch.inf))
        ratio_max = masked_ratio.max() if masked_ratio.numel() else torch.tensor(-torch.inf)
        out["ratio_max"] = (ratio_max, torch.ones((), device=lw.device))
        return out
