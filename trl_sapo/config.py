"""SAPOConfig: GRPOConfig plus SAPO's gate temperatures, validated at construction."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from trl import GRPOConfig

from .reliability import ReliabilityConfigMixin

# Loss types whose objective is not "gate × advantage": the gate would silently replace their defining term.
INCOMPATIBLE_LOSS_TYPES = {
    "cispo": "CISPO multiplies clipped, detached IS weights by log-probs instead of gating the ratio",
    "vespo": "VESPO weights log-probs with a gamma function of the sequence ratio instead of gating it",
}
# Aggregations SAPO's per-token loss can use ('sapo' is TRL's name for the paper's 'grpo' aggregation).
SAPO_LOSS_TYPES = ("grpo", "sapo", "bnpo", "dr_grpo", "dapo", "luspo")
_TRL_SAPO_TEMPERATURE_DEFAULTS = {"sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05}
_EPSILON_DEFAULT = 0.2


class SAPOConfigError(ValueError):
    """A SAPOConfig value that cannot work; the message names the field and what to change."""


@dataclass
class SAPOFieldsMixin:
    """SAPO's config fields and their validation, shared by `SAPOConfig` (sync) and `AsyncSAPOConfig` (async).

    Put it before the TRL config in the bases (``class C(SAPOFieldsMixin, GRPOConfig)``) so that its `loss_type`
    default wins. What differs between trainers is stated by class attributes, not copied code:
    `sapo_loss_types` (aggregations the SAPO gate supports), `clip_loss_types` (those allowed with
    `use_sapo_loss=False`; None = whatever the TRL config accepts) and `trl_sapo_temperature_defaults` (TRL's
    `sapo_temperature_*` values that mean "not set").
    """

    sapo_loss_types = SAPO_LOSS_TYPES
    clip_loss_types = None  # not a field (no annotation): None = what the TRL config accepts
    trl_sapo_temperature_defaults = _TRL_SAPO_TEMPERATURE_DEFAULTS
    sapo_trainer_name = "SAPOTrainer"

    use_sapo_loss: bool = field(
        default=True,
        metadata={
            "help": "Use SAPO's soft sigmoid gate instead of PPO/GRPO clipping. False runs GRPOTrainer's own "
            "clipped objective unchanged (for A/B comparisons with one trainer)."
        },
    )
    sapo_tau_pos: float = field(
        default=1.0,
        metadata={
            "help": "SAPO gate temperature for tokens with positive advantage (A > 0). Higher = sharper gate = "
            "tighter trust region. Finite, > 0."
        },
    )
    sapo_tau_neg: float = field(
        default=1.05,
        metadata={
            "help": "SAPO gate temperature for tokens with non-positive advantage (A <= 0). Recommended >= "
            "sapo_tau_pos. Finite, > 0."
        },
    )
    use_decoupled_loss: bool = field(
        default=False,
        metadata={
            "help": "Kept for configs from other frameworks (AReaL). Must be False: SAPO optimizes against the old "
            "(behaviour) policy directly."
        },
    )
    loss_type: str = field(
        default="grpo",
        metadata={
            "help": "Aggregation of per-token losses: 'grpo' (default, the SAPO paper's: token mean per sequence, "
            "then sequence mean), 'sapo' (alias of 'grpo'), 'bnpo', 'dr_grpo', 'dapo', 'luspo'. With "
            "use_sapo_loss=False any GRPOTrainer loss_type except 'sapo'."
        },
    )

    def __post_init__(self):
        super().__post_init__()  # the TRL config's own validation first
        self._validate_sapo()

    def _validate_sapo(self) -> None:
        for name in ("sapo_tau_pos", "sapo_tau_neg"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SAPOConfigError(f"`{name}` must be a number, got {value!r}.")
            if not math.isfinite(value) or value <= 0:
                raise SAPOConfigError(
                    f"`{name}` must be finite and > 0, got {value!r}. Typical values are 0.5-2 (paper default: "
                    "sapo_tau_pos=1.0, sapo_tau_neg=1.05)."
                )
        if self.use_decoupled_loss:
            raise SAPOConfigError(
                "`use_decoupled_loss=True` is not supported: SAPO gates the ratio to the behaviour policy directly "
                "(no separate proximal policy). Set `use_decoupled_loss: false`."
            )
        if not self.use_sapo_loss:
            if self.clip_loss_types is not None and self.loss_type not in self.clip_loss_types:
                raise SAPOConfigError(
                    f"`loss_type={self.loss_type!r}` is not supported by {self.sapo_trainer_name}; use one of "
                    f"{', '.join(self.clip_loss_types)}."
                )
            if self.loss_type == "sapo":
                raise SAPOConfigError(
                    "`use_sapo_loss=False` runs GRPOTrainer's clipped objective, but `loss_type='sapo'` would select "
                    "TRL's own SAPO gate instead. Pick a clipped loss_type such as 'grpo' or 'dapo', or set "
                    "`use_sapo_loss=True`."
                )
            return
        if self.loss_type in INCOMPATIBLE_LOSS_TYPES:
            raise SAPOConfigError(
                f"`loss_type='{self.loss_type}'` conflicts with the SAPO gate ({INCOMPATIBLE_LOSS_TYPES[self.loss_type]}). "
                f"Use one of {', '.join(SAPO_LOSS_TYPES)}, or set `use_sapo_loss=False` to run it through GRPOTrainer."
            )
        if self.loss_type not in self.sapo_loss_types:
            raise SAPOConfigError(
                f"`loss_type={self.loss_type!r}` is not supported by {self.sapo_trainer_name}; SAPO supports "
                f"{', '.join(self.sapo_loss_types)} there."
            )
        if getattr(self, "delta", None) is not None:
            raise SAPOConfigError(
                f"`delta={self.delta}` (two-sided clipping of the ratio) belongs to the clipped objective and has no "
                "meaning under SAPO's gate, which already bounds f(r) by 4/τ. Remove `delta`, or set "
                "`use_sapo_loss=False`."
            )
        self._refuse_trl_sapo_temperatures()
        if self.sapo_tau_neg < self.sapo_tau_pos:
            warnings.warn(
                f"sapo_tau_neg={self.sapo_tau_neg} < sapo_tau_pos={self.sapo_tau_pos}: the SAPO paper recommends "
                "sapo_tau_neg >= sapo_tau_pos (a sharper, more conservative gate for negative advantages).",
                UserWarning,
                stacklevel=3,
            )
        if self.epsilon != _EPSILON_DEFAULT or self.epsilon_high is not None:
            warnings.warn(
                f"epsilon={self.epsilon}, epsilon_high={self.epsilon_high} only apply to the clipped objective "
                "(use_sapo_loss=False); with use_sapo_loss=True the trust region is set by sapo_tau_pos/sapo_tau_neg.",
                UserWarning,
                stacklevel=3,
            )

    def _refuse_trl_sapo_temperatures(self) -> None:
        """TRL's `sapo_temperature_*` are read only by GRPOTrainer(loss_type='sapo'): a set value is a mistake."""
        for name, default in self.trl_sapo_temperature_defaults.items():
            if getattr(self, name, default) != default:
                ours = name.replace("sapo_temperature", "sapo_tau")
                raise SAPOConfigError(
                    f"`{name}` is TRL's `loss_type='sapo'` setting and is not read by {self.sapo_trainer_name}. "
                    f"Set `{ours}` instead."
                )


@dataclass
class SAPOConfig(ReliabilityConfigMixin, SAPOFieldsMixin, GRPOConfig):
    r"""
    Configuration class for [`trl_sapo.SAPOTrainer`].

    Inherits every parameter of [`trl.GRPOConfig`], and `save_on_sigterm` / `nonfinite_policy` from
    [`trl_sapo.reliability.ReliabilityConfigMixin`]. SAPO (Soft Adaptive Policy Optimization,
    https://huggingface.co/papers/2511.20347) replaces the clipped surrogate with a smooth gate on the importance
    ratio `r = π_θ / π_old`: per token, loss `= -f(r) · A` with `f(r) = 4/τ · σ(τ (r - 1))`, `τ = sapo_tau_pos` when
    `A > 0` and `sapo_tau_neg` when `A ≤ 0`. Its gradient weight `w = 4 σ(z)(1 - σ(z)) r` is 1 on-policy and decays
    smoothly off-policy, instead of dropping to 0 outside `[1 - ε, 1 + ε]`.

    Parameters:
        use_sapo_loss (`bool`, *optional*, defaults to `True`):
            Use SAPO's soft gate. `False` runs GRPOTrainer's own objective for the configured `loss_type`
            unchanged (the clipped surrogate with `epsilon`), so one trainer runs both arms of an A/B comparison.
        sapo_tau_pos (`float`, *optional*, defaults to `1.0`):
            Gate temperature for tokens with positive advantage. Higher = sharper gate = tighter (soft) trust
            region. The default 1.0 is the paper's drop-in replacement for GRPO's `ε = 0.2`, but its trust region is
            much wider: the gradient weight stays above 1/2 for 0.53 ≤ r ≤ 4.5 (τ ≈ 8 matches ε = 0.2's band).
            Must be finite and > 0.
        sapo_tau_neg (`float`, *optional*, defaults to `1.05`):
            Gate temperature for tokens with non-positive advantage. The paper recommends `sapo_tau_neg ≥
            sapo_tau_pos` (more conservative on negative advantages, whose updates destabilise training more);
            a smaller value gives a warning. Must be finite and > 0.
        use_decoupled_loss (`bool`, *optional*, defaults to `False`):
            Accepted so that configs written for AReaL (`actor.use_decoupled_loss`) load unchanged; must stay
            `False`: SAPO gates the ratio to the behaviour policy directly, there is no separate proximal policy.
        loss_type (`str`, *optional*, defaults to `"grpo"`):
            How per-token losses are aggregated. SAPO's default is the paper's: mean over each sequence's tokens,
            then over sequences. `"bnpo"`, `"dr_grpo"`, `"dapo"`, `"luspo"` aggregate as in GRPOTrainer (`"sapo"`
            is an alias of `"grpo"`); `"cispo"` and `"vespo"` define a different objective and are rejected.
    """

    config_error = SAPOConfigError  # raised by ReliabilityConfigMixin's validation too
    # __post_init__: ReliabilityConfigMixin's, which runs SAPOFieldsMixin's (GRPOConfig's, then SAPO's) first.
