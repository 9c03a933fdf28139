"""Plot SAPO's soft gate against PPO/GRPO clipping: objective and gradient weight vs the ratio r, for A > 0 and A < 0.

    python -m trl_sapo.tools.plot_gates                                   # ./sapo_gates.png
    python -m trl_sapo.tools.plot_gates --taus 0.5 1 2 --epsilon 0.28 --output /tmp/gates.png /tmp/gates.svg

Needs matplotlib (``pip install 'trl-sapo[plots]'``). The README figure is regenerated from a checkout with
``make figures`` (``--output docs/figures/sapo_gates.png docs/figures/sapo_gates.svg``).

What is compared, per unit of advantage (the token's contribution is J = A · g(r), and its policy gradient is
A · ∂g/∂log r · ∇logπ_θ):

    left   g(r) − g(1)     SAPO: g = f(r) = 4/τ · σ(τ(r − 1));  PPO: g = clipped surrogate / A
                           (the constant g(1) does not change gradients; removing it puts all curves through 0 at r = 1)
    right  ∂g/∂log r       SAPO: w(r) = 4 σ(z) σ(−z) r;  PPO: r inside the trust region in the direction the
                           advantage pushes, 0 where clipped

Every number comes from ``trl_sapo.loss`` (``gate_value``, ``gradient_weight``, ``clipped_surrogate``; PPO's
gradient by autograd through ``clipped_surrogate`` w.r.t. log r).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from trl_sapo.loss import clipped_surrogate, gate_value, gradient_weight
from trl_sapo.tools import import_pyplot

plt = import_pyplot()
DEFAULT_OUTPUTS = (Path("sapo_gates.png"),)
DEFAULT_TAUS = (0.5, 1.0, 1.05, 2.0)
PPO_LABEL = "PPO/GRPO clip, ε={eps:g}"
PPO_COLOR = "black"


def sapo_label(tau: float, default_for: str | None = None) -> str:
    """Legend label of a SAPO curve; ``default_for`` ("τ_pos"/"τ_neg") marks the paper's default temperature."""
    return f"SAPO τ={tau:g}" + (f" (default {default_for})" if default_for else "")


def sapo_series(r: torch.Tensor, tau: float, center: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """SAPO's objective per unit advantage g(r) = f(r) (minus f(1) when ``center``) and its gradient weight ∂g/∂log r = w.

    The same for either sign of A: the sign only selects τ.
    """
    log_r = torch.log(r)
    g = gate_value(log_r, tau)
    if center:
        g = g - gate_value(torch.zeros(()), tau)
    return g, gradient_weight(log_r, tau)


def ppo_series(
    r: torch.Tensor, sign: float, epsilon: float, epsilon_high: float | None = None, center: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's surrogate per unit advantage g(r) = min(rA, clip(r)A)/A and ∂g/∂log r, by autograd w.r.t. log r."""
    advantage = torch.tensor(sign)
    log_r = torch.log(r).detach().requires_grad_(True)
    surrogate = clipped_surrogate(torch.exp(log_r), advantage, epsilon, epsilon_high)
    (grad,) = torch.autograd.grad(surrogate.sum(), log_r)
    g = surrogate.detach() / advantage
    if center:
        g = g - clipped_surrogate(torch.ones(()), advantage, epsilon, epsilon_high) / advantage
    return g, grad / advantage


def make_gate_figure(
    taus: Sequence[float] = DEFAULT_TAUS,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    r_max: float = 3.0,
    num_points: int = 601,
    center: bool = True,
) -> plt.Figure:
    """2×2 figure: rows A > 0 / A < 0; columns objective per unit advantage / gradient weight ∂(J/A)/∂log r.

    Each axis holds one line per τ in ``taus`` (label ``sapo_label``; the row's default τ drawn thicker) and one PPO
    line (label ``PPO_LABEL``), all over r ∈ (0, r_max]. r = 0 itself is left out (log r = −inf).
    """
    if not taus:
        raise ValueError("taus must name at least one temperature.")
    if any(t <= 0 for t in taus) or epsilon <= 0 or r_max <= 1:
        raise ValueError(
            f"Need taus > 0, epsilon > 0 and r_max > 1; got taus={taus}, epsilon={epsilon}, r_max={r_max}."
        )
    eps_high = epsilon if epsilon_high is None else epsilon_high
    r = torch.linspace(r_max / (num_points - 1) / 10, r_max, num_points, dtype=torch.float64).float()
    r = torch.sort(torch.cat([r, torch.tensor([1.0, 1 - epsilon, 1 + eps_high])])).values  # exact kinks and r = 1
    rows = ((+1.0, "A > 0", tau_pos, "τ_pos"), (-1.0, "A < 0", tau_neg, "τ_neg"))
    cmap = plt.get_cmap("viridis")
    all_taus = sorted(set(taus) | {tau_pos, tau_neg})
    colors = {tau: cmap(i / max(len(all_taus) - 1, 1) * 0.85) for i, tau in enumerate(all_taus)}
    i_on = int(torch.nonzero(r == 1.0)[0])

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.2), sharex=True, constrained_layout=True)
    for row, (sign, row_name, default_tau, default_name) in enumerate(rows):
        ax_obj, ax_grad = axes[row]
        for ax in (ax_obj, ax_grad):
            ax.axvspan(1 - epsilon, 1 + eps_high, color="0.92", zorder=0)
            ax.axvline(1.0, color="0.5", lw=0.8, ls=":", zorder=1)
        row_taus = list(taus) + ([default_tau] if all(abs(t - default_tau) > 1e-9 for t in taus) else [])
        for tau in row_taus:
            g, w = sapo_series(r, tau, center)
            is_default = abs(tau - default_tau) < 1e-9
            style = {"color": colors[tau], "lw": 2.6 if is_default else 1.5, "zorder": 3 if is_default else 2}
            label = sapo_label(tau, default_name if is_default else None)
            ax_obj.plot(r.numpy(), g.numpy(), label=label, **style)
            ax_grad.plot(r.numpy(), w.numpy(), label=label, **style)
        g, grad = ppo_series(r, sign, epsilon, epsilon_high, center)
        ppo_label = PPO_LABEL.format(eps=epsilon) + (f"/{eps_high:g}" if eps_high != epsilon else "")
        ax_obj.plot(r.numpy(), g.numpy(), color=PPO_COLOR, ls="--", lw=1.8, label=ppo_label, zorder=4)
        ax_grad.plot(r.numpy(), grad.numpy(), color=PPO_COLOR, ls="--", lw=1.8, label=ppo_label, zorder=4)
        # On-policy point r = 1: centred objectives all pass through 0 there, every gradient weight is 1.
        on_policy = [line.get_ydata()[i_on] for line in ax_obj.get_lines() if not line.get_label().startswith("_")]
        ax_obj.plot([1.0] * len(on_policy), on_policy, "o", color="crimson", ms=6, zorder=5, label="_on_policy")
        ax_grad.plot([1.0], [1.0], "o", color="crimson", ms=6, zorder=5, label="on-policy r = 1 (w = 1)")

        push = "raises" if sign > 0 else "lowers"
        ax_obj.set_title(f"{row_name}: objective per unit advantage (the update {push} r)", fontsize=10.5)
        ax_grad.set_title(f"{row_name}: gradient weight on A·∇logπ_θ", fontsize=10.5)
        ax_obj.set_ylabel("g(r) − g(1),   g = J/A" if center else "g(r) = J/A")
        ax_grad.set_ylabel("∂(J/A)/∂log r")
        ax_grad.set_ylim(bottom=-0.05)
        for ax in (ax_obj, ax_grad):
            ax.grid(alpha=0.3)
            ax.set_xlim(0, r_max)
    for ax in axes[1]:
        ax.set_xlabel("importance ratio r = π_θ / π_old")
    for ax in axes[:, 1]:
        ax.legend(loc="upper left", fontsize=8.5, framealpha=0.95)
    fig.suptitle(
        "SAPO soft gate vs PPO/GRPO hard clipping\n"
        f"SAPO: f(r) = 4/τ·σ(τ(r−1)), w = ∂f/∂log r, w(1) = 1;   shaded: PPO trust region [{1 - epsilon:g}, {1 + eps_high:g}]",
        fontsize=12,
    )
    return fig


def save_figure(fig: plt.Figure, outputs: Sequence[str | Path], dpi: int = 120) -> list[Path]:
    """Write ``fig`` to each path (format from the suffix); no timestamps, so re-rendering gives the same files."""
    written = []
    for out in map(Path, outputs):
        out.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"Date": None} if out.suffix == ".svg" else None
        with plt.rc_context({"svg.hashsalt": "trl-sapo"}):  # stable element ids in the SVG
            fig.savefig(out, dpi=dpi, metadata=metadata)
        written.append(out)
    return written


def make_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m trl_sapo.tools.plot_gates``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--taus", type=float, nargs="+", default=list(DEFAULT_TAUS), help="SAPO temperatures to draw")
    parser.add_argument("--tau_pos", type=float, default=1.0, help="τ highlighted in the A > 0 row")
    parser.add_argument("--tau_neg", type=float, default=1.05, help="τ highlighted in the A < 0 row")
    parser.add_argument("--epsilon", type=float, default=0.2, help="PPO/GRPO clip range ε (low side)")
    parser.add_argument("--epsilon_high", type=float, default=None, help="upper clip range (default: epsilon)")
    parser.add_argument("--r_max", type=float, default=3.0, help="right end of the ratio axis")
    parser.add_argument("--no_center", action="store_true", help="plot J/A itself instead of J/A − its value at r=1")
    parser.add_argument(
        "--output", nargs="+", default=[str(p) for p in DEFAULT_OUTPUTS], help="files to write (.png, .svg, .pdf)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = make_parser()
    args = parser.parse_args(argv)
    plt.switch_backend("Agg")  # headless rendering; importing this module leaves the backend alone (notebooks)
    try:
        fig = make_gate_figure(
            args.taus,
            args.epsilon,
            args.epsilon_high,
            args.tau_pos,
            args.tau_neg,
            args.r_max,
            center=not args.no_center,
        )
    except ValueError as err:
        parser.error(str(err))
    written = save_figure(fig, args.output)
    plt.close(fig)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
