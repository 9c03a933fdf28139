"""The pure loss module: hand-computed values, exact gradients, overflow-free extremes, dtypes."""

import math

import pytest
import torch

from trl_sapo import loss as sapo


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def naive_gate(log_ratio: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The formula as written in the paper / TRL: autograd through exp and sigmoid (float64 for a reference)."""
    return torch.sigmoid(tau * (torch.exp(log_ratio) - 1)) * 4 / tau


@pytest.mark.parametrize(
    ("ratio", "tau", "gate", "weight"),
    [
        (1.0, 1.0, 2.0, 1.0),  # on-policy: f = 2/τ, w = 1
        (1.0, 1.05, 2 / 1.05, 1.0),
        (1.0, 2.0, 1.0, 1.0),
        (2.0, 1.0, 4 * sigmoid(1.0), 4 * sigmoid(1.0) * (1 - sigmoid(1.0)) * 2),
        (2.0, 1.05, 4 / 1.05 * sigmoid(1.05), 4 * sigmoid(1.05) * (1 - sigmoid(1.05)) * 2),
        (0.5, 1.0, 4 * sigmoid(-0.5), 4 * sigmoid(-0.5) * (1 - sigmoid(-0.5)) * 0.5),
        (1e-30, 1.0, 4 * sigmoid(-1.0), 0.0),  # r → 0: f → 4σ(−τ)/τ, w → 0
        (1e-30, 0.5, 8 * sigmoid(-0.5), 0.0),
    ],
)
def test_hand_computed_gate_and_weight(ratio, tau, gate, weight):
    log_ratio = torch.tensor([math.log(ratio)])
    assert sapo.gate_value(log_ratio, tau).item() == pytest.approx(gate, rel=1e-6)
    assert sapo.gradient_weight(log_ratio, tau).item() == pytest.approx(weight, rel=1e-5, abs=1e-12)


def test_hand_computed_loss_asymmetric_tau():
    """Two sequences, r = 2 and r = 1, A = +1 and −1: tau_pos gates the first, tau_neg the second."""
    logps = torch.tensor([[math.log(2.0), math.log(2.0)], [0.0, 0.0]], requires_grad=True)
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    loss = sapo.sapo_loss(logps, old, adv, mask, tau_pos=1.0, tau_neg=2.0)
    f_pos = 4 * sigmoid(1.0)  # τ=1, r=2
    f_neg = 4 / 2.0 * 0.5  # τ=2, r=1
    assert loss.item() == pytest.approx(-(f_pos * 1.0 + f_neg * -1.0) / 2, rel=1e-6)
    loss.backward()
    w_pos = 4 * sigmoid(1.0) * (1 - sigmoid(1.0)) * 2
    # d loss / d logp = −A · w / (tokens per sequence · sequences)
    expected = torch.tensor([[-w_pos / 4, -w_pos / 4], [1 / 4, 1 / 4]])
    torch.testing.assert_close(logps.grad, expected, rtol=1e-5, atol=1e-7)


def test_zero_advantage_uses_tau_neg_and_gives_zero_loss():
    tau = sapo.temperatures(torch.tensor([1.0, 0.0, -1.0]), 0.7, 1.3)
    assert tau.tolist() == pytest.approx([0.7, 1.3, 1.3])
    logps = torch.randn(3, 4, requires_grad=True)
    loss = sapo.sapo_loss(logps, torch.zeros(3, 4), torch.zeros(3), torch.ones(3, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logps.grad) == 0


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("taus", [(1.0, 1.05), (0.5, 2.0), (3.0, 0.3)])
def test_gradient_matches_autograd_through_naive_formula(level, taus):
    torch.manual_seed(0)
    B, T = 6, 9
    logps = (torch.randn(B, T, dtype=torch.float64) * 0.5 - 2).requires_grad_()
    old = logps.detach() + torch.randn(B, T, dtype=torch.float64) * 0.4  # ratios roughly in [0.3, 3]
    adv = torch.randn(B, dtype=torch.float64)
    mask = (torch.rand(B, T) > 0.2).double()
    mask[:, 0] = 1

    got = sapo.sapo_loss(logps, old, adv, mask, *taus, importance_sampling_level=level)
    (grad_got,) = torch.autograd.grad(got, logps)

    log_ratio = (logps - old) * mask
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1)).unsqueeze(-1)
    tau = torch.where(adv.unsqueeze(1) > 0, taus[0], taus[1]).to(torch.float64)
    ref_per_token = -naive_gate(log_ratio, tau) * adv.unsqueeze(1)
    ref = ((ref_per_token * mask).sum(-1) / mask.sum(-1)).mean()
    (grad_ref,) = torch.autograd.grad(ref, logps)

    # ours computes in float32 by design; compare against the float64 reference at float32 precision
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_got.double(), grad_ref, rtol=2e-5, atol=1e-8)


def test_gradient_is_minus_advantage_times_weight_per_token():
    torch.manual_seed(1)
    logps = torch.randn(4, 5, requires_grad=True)
    old = logps.detach() + torch.randn(4, 5)
    adv = torch.randn(4)
    mask = torch.ones(4, 5)
    terms = sapo.sapo_per_token_loss(logps, old, adv, mask)
    (grad,) = torch.autograd.grad(terms.per_token_loss.sum(), logps)
    tau = sapo.temperatures(adv, 1.0, 1.05).unsqueeze(1)
    expected = -adv.unsqueeze(1) * sapo.gradient_weight(logps.detach() - old, tau)
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("log_ratio", [-1e4, -100.0, -88.0, 50.0, 88.0, 89.0, 100.0, 1e4])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_finite_and_correct_at_extreme_log_ratios(log_ratio, level):
    """TRL's formula gives NaN gradients past log r ≈ 88.7 (exp overflow); ours stays finite and exact."""
    logps = torch.full((2, 3), -1.0, requires_grad=True)
    old = logps.detach() - log_ratio
    adv = torch.tensor([1.0, -1.0])
    loss = sapo.sapo_loss(logps, old, adv, torch.ones(2, 3), importance_sampling_level=level)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logps.grad).all()
    # Far off-policy the gate saturates: f → 4/τ for r → ∞, f → 4σ(−τ)/τ for r → 0, and w → 0 either way.
    expected_gate = (4.0 if log_ratio > 0 else 4 * sigmoid(-1.0)) * 1.0 - (
        4 / 1.05 if log_ratio > 0 else 4 / 1.05 * sigmoid(-1.05)
    )
    assert loss.item() == pytest.approx(-expected_gate / 2, rel=1e-5)
    assert logps.grad.abs().max().item() < 1e-12


def test_weight_in_moderate_saturation_is_not_flushed_to_zero():
    """z ≈ 20: σ(z) rounds to 1 in float32, so the naive σ(1−σ) is 0; the exact w is ≈ 4·e^−z·r > 0."""
    log_ratio = torch.tensor([math.log(21.0)])
    w = sapo.gradient_weight(log_ratio, 1.0).item()
    assert w == pytest.approx(4 * math.exp(-20.0) * 21 / (1 + math.exp(-20.0)) ** 2, rel=1e-4)
    x = log_ratio.clone().requires_grad_()
    naive_gate(x, torch.tensor(1.0)).backward()
    assert x.grad.item() == 0.0  # what the naive graph does in float32


def test_bf16_inputs_computed_in_float32():
    torch.manual_seed(2)
    logps32 = torch.randn(3, 7) - 1
    old32 = logps32 + 0.25 * torch.randn(3, 7)
    logps16 = logps32.bfloat16().requires_grad_()
    old16 = old32.bfloat16()
    adv = torch.tensor([0.5, -1.0, 2.0])
    loss = sapo.sapo_loss(logps16, old16, adv, torch.ones(3, 7))
    assert loss.dtype == torch.float32
    loss.backward()
    assert logps16.grad.dtype == torch.bfloat16 and torch.isfinite(logps16.grad.float()).all()
    # Same as float32 on the bf16-rounded inputs: no computation happened in bf16.
    ref_logps = logps16.detach().float().requires_grad_()
    ref = sapo.sapo_loss(ref_logps, old16.float(), adv, torch.ones(3, 7))
    assert loss.item() == ref.item()
    for extreme in (100.0, -100.0, 1e4):
        x = torch.full((1, 2), extreme, dtype=torch.bfloat16, requires_grad=True)
        out = sapo.sapo_loss(x, torch.zeros(1, 2, dtype=torch.bfloat16), torch.tensor([1.0]), torch.ones(1, 2))
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad.float()).all()


def test_masked_positions_with_infinite_old_logps_contribute_nothing():
    logps = torch.randn(2, 4, requires_grad=True)
    old = logps.detach().clone()
    old[:, 2:] = -torch.inf
    old[0, 3] = torch.inf
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])
    loss = sapo.sapo_loss(logps, old, torch.tensor([1.0, -2.0]), mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert (logps.grad[:, 2:] == 0).all()


def test_sequence_level_gates_geometric_mean_ratio():
    logps = torch.log(torch.tensor([[2.0, 0.5, 4.0]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    terms = sapo.sapo_per_token_loss(logps, torch.zeros(1, 3), torch.tensor([1.0]), mask, 1.0, 1.0, "sequence")
    assert terms.per_token_loss.shape == (1, 1)
    assert terms.log_importance_weights.item() == pytest.approx(0.0, abs=1e-7)  # √(2 · 0.5) = 1
    assert terms.per_token_loss.item() == pytest.approx(-2.0)


def test_clipped_surrogate_matches_ppo():
    ratio = torch.tensor([0.5, 1.0, 1.5, 0.5, 1.5])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0])
    torch.testing.assert_close(sapo.clipped_surrogate(ratio, adv, 0.2), torch.tensor([0.5, 1.0, 1.2, -0.8, -1.5]))


def test_aggregations_match_their_definitions():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert sapo.aggregate(x, mask, "grpo").item() == pytest.approx((1.5 + 5.0) / 2)
    assert sapo.aggregate(x, mask, "sapo").item() == pytest.approx((1.5 + 5.0) / 2)
    assert sapo.aggregate(x, mask, "bnpo").item() == pytest.approx(18 / 5)
    assert sapo.aggregate(x, mask, "dr_grpo", max_completion_length=4).item() == pytest.approx(18 / 8)
    assert sapo.aggregate(x, mask, "dapo", num_items_in_batch=9.0).item() == pytest.approx(2.0)
    assert sapo.aggregate(x, mask, "luspo").item() == pytest.approx(9.0)
    with pytest.raises(ValueError, match="cispo"):
        sapo.aggregate(x, mask, "cispo")


def test_diagnostics_on_policy_and_split_by_sign():
    lr = torch.tensor([[0.0, 0.0], [math.log(10.0), 0.0]])
    adv = torch.tensor([1.0, -1.0])
    tau = sapo.temperatures(adv, 1.0, 2.0).unsqueeze(1).expand(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    d = {k: (v[0] / v[1]).item() for k, v in sapo.diagnostics(lr, tau, adv, mask).items() if k != "ratio_max"}
    assert d["gate_mean_pos"] == pytest.approx(2.0)
    assert d["grad_weight_mean_pos"] == pytest.approx(1.0)
    assert d["soft_clip_ratio_pos"] == 0.0
    assert d["soft_clip_ratio_neg"] == 1.0  # r = 10 at τ = 2: w ≈ 0
    assert d["soft_clip_ratio"] == pytest.approx(1 / 3)
    assert d["ratio_mean"] == pytest.approx(4.0)
    assert sapo.diagnostics(lr, tau, adv, mask)["ratio_max"][0].item() == pytest.approx(10.0)
