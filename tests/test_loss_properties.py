"""Property tests of trl_sapo.loss over the full input range (hypothesis).

Inputs: log-ratios up to ±1e4, ±inf/NaN old log-probs and arbitrary current log-probs on masked-out tokens,
all-zero masks, zero advantages, float32 and bfloat16 log-probs, token and sequence level, every aggregation.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_sapo import loss as L

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TAUS = st.sampled_from([0.1, 1.0, 1.05, 3.0, 10.0])
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]

finite_log_ratio = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False),
    st.sampled_from([-1e4, -100.0, -88.8, -1.0, 0.0, 1e-7, 1.0, 17.0, 88.8, 100.0, 1e4]),
)
garbage = st.sampled_from([float("inf"), float("-inf"), float("nan"), 0.0, -1e30, 5.0])


@functools.lru_cache
def w_max(tau: float) -> float:
    """max over log-ratios of w = 4 σ(z) σ(−z) r, z = τ(r − 1), on a dense float64 grid (+ a little slack)."""
    x = torch.linspace(-20, 20, 400_001, dtype=torch.float64)
    z = tau * torch.expm1(x)
    w = 4 * torch.sigmoid(z) * torch.sigmoid(-z) * torch.exp(x)
    return w.max().item() * (1 + 1e-4)


@st.composite
def batches(draw, max_b=3, max_t=6):
    """(logps, old_logps, advantages, mask) with garbage on masked-out tokens of old (and current) log-probs."""
    b, t = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))).view(b, t)
    if draw(st.booleans()):
        mask = torch.zeros_like(mask) if draw(st.booleans()) else torch.ones_like(mask)
    logps = torch.tensor(draw(st.lists(st.floats(-30, 0), min_size=b * t, max_size=b * t))).view(b, t)
    log_ratio = torch.tensor(draw(st.lists(finite_log_ratio, min_size=b * t, max_size=b * t))).view(b, t)
    old = (logps.double() - log_ratio.double()).float()
    junk_old = torch.tensor(draw(st.lists(garbage, min_size=b * t, max_size=b * t))).view(b, t)
    old = torch.where(mask, old, junk_old)
    adv_values = st.one_of(st.just(0.0), st.floats(-1e3, 1e3, allow_nan=False))
    advantages = torch.tensor(draw(st.lists(adv_values, min_size=b, max_size=b)))
    return logps.to(dtype), old, advantages, mask


def run(logps, old, adv, mask, tau_pos, tau_neg, level, loss_type="grpo", max_len=None):
    """Scalar aggregated loss and d loss / d logps (in the logps dtype)."""
    logps = logps.detach().clone().requires_grad_(True)
    terms = L.sapo_per_token_loss(logps, old, adv, mask, tau_pos, tau_neg, level)
    num_items = mask.sum().clamp(min=1).float()
    loss = L.aggregate(terms.per_token_loss, mask, loss_type, max_len or mask.shape[1], num_items)
    loss.backward()
    return loss.detach(), logps.grad, terms


@SETTINGS
@given(batch=batches(), tau_pos=TAUS, tau_neg=TAUS, level=st.sampled_from(["token", "sequence"]))
def test_loss_and_gradients_finite_and_masked_tokens_inert(batch, tau_pos, tau_neg, level):
    logps, old, adv, mask = batch
    for loss_type in LOSS_TYPES:
        loss, grad, _ = run(logps, old, adv, mask, tau_pos, tau_neg, level, loss_type)
        assert torch.isfinite(loss), (loss_type, loss)
        assert torch.isfinite(grad.float()).all(), (loss_type, grad)
        assert (grad[~mask] == 0).all(), "masked-out tokens received gradient"
    # Masked-out values do not matter at all: replace them with other garbage, same loss and gradient bit for bit.
    logps2 = torch.where(mask, logps, torch.full_like(logps, -7.0))
    old2 = torch.where(mask, old, torch.full_like(old, float("-inf")))
    loss_a, grad_a, _ = run(logps, old, adv, mask, tau_pos, tau_neg, level)
    loss_b, grad_b, _ = run(logps2, old2, adv, mask, tau_pos, tau_neg, level)
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)


@SETTINGS
@given(batch=batches(), tau_pos=TAUS, tau_neg=TAUS, level=st.sampled_from(["token", "sequence"]))
def test_gate_and_weight_bounds(batch, tau_pos, tau_neg, level):
    logps, old, adv, mask = batch
    _, _, terms = run(logps, old, adv, mask, tau_pos, tau_neg, level)
    lw, tau = terms.log_importance_weights.detach(), terms.tau
    f = L.gate_value(lw, tau)
    w = L.gradient_weight(lw, tau)
    assert (f > 0).all() and (f <= 4.0 / tau).all(), f
    for t in {tau_pos, tau_neg}:
        sel = tau == t
        assert (w[sel] >= 0).all() and (w[sel] <= w_max(t)).all(), (t, w[sel].max(), w_max(t))


@SETTINGS
@given(x=st.floats(-1e4, 1e4, allow_nan=False), tau=TAUS)
def test_scalar_gate_weight_bounds_and_derivative(x, tau):
    lr = torch.tensor([x])
    f, w = L.gate_value(lr, tau).item(), L.gradient_weight(lr, tau).item()
    assert 0 < f <= torch.tensor(4 / tau).item()  # 4/τ rounded to float32, like f
    assert 0 <= w <= w_max(tau)
    # w = df/dlog r, against the plain float64 formula (not autograd: expm1's backward, expm1(x) + 1, cancels
    # catastrophically for x << 0). Below float32's normal range (1.2e-38) only the absolute error is meaningful.
    xd = lr[0].double()  # the float32 input the loss saw: rounding x to float32 moves z by up to tau·e^x·6e-8
    z = tau * torch.expm1(xd)
    reference = (4 * torch.sigmoid(z) * torch.sigmoid(-z) * torch.exp(xd)).item()
    if math.isfinite(reference):  # float64 overflows (0 · inf) for x > 709, where w = 0
        # e^-|z| has the relative error of z itself (a few float32 ulps times |z|), on top of the 1e-5 of the rest
        assert w == pytest.approx(reference, rel=1e-5 + 4 * abs(z.item()) * 2**-24, abs=1e-37)
    else:
        assert x > 700 and w == 0.0


@SETTINGS
@given(
    batch=batches(), tau_pos=TAUS, tau_neg=TAUS, level=st.sampled_from(["token", "sequence"]), pad=st.integers(1, 4)
)
def test_invariant_to_padding_length(batch, tau_pos, tau_neg, level, pad):
    logps, old, adv, mask = batch
    b = mask.shape[0]
    logps_p = torch.cat([logps, torch.full((b, pad), -3.0, dtype=logps.dtype)], dim=1)
    old_p = torch.cat([old, torch.full((b, pad), float("-inf"))], dim=1)
    mask_p = torch.cat([mask, torch.zeros(b, pad, dtype=torch.bool)], dim=1)
    for loss_type in ("grpo", "bnpo", "dapo", "luspo", "dr_grpo"):
        max_len = mask.shape[1] + 4  # dr_grpo's constant normalizer, the same for both widths
        loss, grad, _ = run(logps, old, adv, mask, tau_pos, tau_neg, level, loss_type, max_len)
        loss_p, grad_p, _ = run(logps_p, old_p, adv, mask_p, tau_pos, tau_neg, level, loss_type, max_len)
        torch.testing.assert_close(loss_p, loss, rtol=1e-6, atol=1e-6 * (1 + loss.abs().item()))
        torch.testing.assert_close(grad_p[:, : mask.shape[1]].float(), grad.float(), rtol=1e-5, atol=1e-30)
        assert (grad_p[:, mask.shape[1] :] == 0).all()


@SETTINGS
@given(batch=batches(), tau_pos=TAUS, tau_neg=TAUS, level=st.sampled_from(["token", "sequence"]))
def test_zero_advantages_or_empty_mask_give_zero(batch, tau_pos, tau_neg, level):
    logps, old, adv, mask = batch
    loss, grad, _ = run(logps, old, torch.zeros_like(adv), mask, tau_pos, tau_neg, level)
    assert loss.item() == 0 and (grad == 0).all()
    loss, grad, _ = run(logps, old, adv, torch.zeros_like(mask), tau_pos, tau_neg, level)
    assert loss.item() == 0 and (grad == 0).all()


@SETTINGS
@given(batch=batches(), tau_pos=TAUS, tau_neg=TAUS)
def test_token_gradient_matches_closed_form(batch, tau_pos, tau_neg):
    """grpo aggregation: d loss / d logp[i, t] = −A_i · w(log r[i, t]) · m[i, t] / (|m_i| · B)."""
    logps, old, adv, mask = batch
    _, grad, terms = run(logps, old, adv, mask, tau_pos, tau_neg, "token")
    w = L.gradient_weight(terms.log_importance_weights.detach(), terms.tau)
    lengths = mask.sum(-1, keepdim=True).clamp(min=1)
    expected = -adv.unsqueeze(1) * w * mask / lengths / mask.shape[0]
    if logps.dtype == torch.bfloat16:
        expected = expected.to(torch.bfloat16)
    torch.testing.assert_close(
        grad.float(), expected.float(), rtol=1e-5 if logps.dtype == torch.float32 else 1e-2, atol=1e-40
    )


def test_w_max_reference():
    """The bound used above: w peaks near r ≈ 1 with w(1) = 1 exactly; max w > 1 for τ ≥ 1 (r factor)."""
    assert w_max(1.0) >= 1.0
    assert L.gradient_weight(torch.tensor([0.0]), 1.0).item() == pytest.approx(1.0)
    assert math.isfinite(w_max(10.0))
