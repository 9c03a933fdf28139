"""Prototype (benchmark-only): `trl_sapo.loss.sapo_per_token_loss` without materialising τ at (B, T).

`sapo_per_token_loss` expands τ from (B, 1) to the (B, T) shape of the log-ratio, and `soft_gate` expands it again.
The expansion is a stride-0 view (no memory), but ops that read it (`4/τ` in the forward, `τ·(r − 1)` again in the
backward's `gradient_weight` and in `diagnostics`) then run over B·T elements on a strided operand instead of B.
Measured effect (CPU, 1 thread, 64×4096, min/median CPU time over 60 interleaved repeats): 4.42/6.14 ms vs
4.67/6.43 ms for the current code, i.e. ~5 %: within this machine's noise, so it is an option, not a fix.

The prototype keeps τ at its natural shape ((B, 1) for sequence advantages) and lets broadcasting do the rest; the
math, the custom backward and the returned terms are unchanged (`SapoTerms.tau` is then (B, 1), which
`diagnostics` already broadcasts). `patched()` swaps it into `trl_sapo.loss` for a measurement.
"""

from __future__ import annotations

import contextlib

import torch

from trl_sapo import loss as sapo_loss


def soft_gate(log_ratio: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Same as `trl_sapo.loss.soft_gate`, but τ is only broadcast, never expanded to log_ratio's shape."""
    log_ratio = log_ratio if log_ratio.dtype == torch.float32 else log_ratio.float()
    tau = torch.as_tensor(tau, dtype=torch.float32, device=log_ratio.device)
    return sapo_loss._SoftGate.apply(log_ratio, tau)


def sapo_per_token_loss(
    per_token_logps,
    old_per_token_logps,
    advantages,
    mask,
    tau_pos=1.0,
    tau_neg=1.05,
    importance_sampling_level="token",
) -> sapo_loss.SapoTerms:
    """Same as `trl_sapo.loss.sapo_per_token_loss` with τ left at the advantages' shape."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    advantages = advantages if advantages.dtype == torch.float32 else advantages.float()
    log_ratio = sapo_loss.masked_log_ratio(per_token_logps, old_per_token_logps, mask)
    if importance_sampling_level == "token":
        log_weights = log_ratio
    elif importance_sampling_level == "sequence":
        log_weights = sapo_loss.sequence_log_ratio(log_ratio, mask)
    else:
        raise ValueError(
            f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}."
        )
    tau = sapo_loss.temperatures(advantages, tau_pos, tau_neg)
    shape = torch.broadcast_shapes(log_weights.shape, tau.shape)
    log_weights = log_weights.expand(shape)  # (B, 1) sequence weights with (B, T) advantages; a no-op otherwise
    gate = soft_gate(log_weights, tau)
    return sapo_loss.SapoTerms(per_token_loss=-gate * advantages, log_importance_weights=log_weights, tau=tau)


@contextlib.contextmanager
def patched():
    """Route `trl_sapo.loss.sapo_per_token_loss` (what SAPOTrainer calls) through the prototype."""
    original = sapo_loss.sapo_per_token_loss
    sapo_loss.sapo_per_token_loss = sapo_per_token_loss
    try:
        yield
    finally:
        sapo_loss.sapo_per_token_loss = original
