"""Pins the private transformers/TRL internals `ReliabilityMixin` depends on against the installed versions.

A private method renamed upstream would silently turn an override into dead code (the feature stops working, no
error). Each failure says what to re-check after an upgrade; `trl_sapo.reliability.PRIVATE_OVERRIDES` says why each
override has no public hook.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import transformers
import trl
from transformers import Trainer
from trl import GRPOTrainer

from trl_sapo.reliability import PRIVATE_OVERRIDES, ReliabilityMixin

VERSIONS = f"transformers {transformers.__version__}, trl {trl.__version__}"


def _upgrade_message(what: str, recheck: str) -> str:
    return f"{VERSIONS}: {what}. Re-check {recheck} in trl_sapo/reliability/ (then update this test)."


def _class(dotted: str) -> type:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _source(func) -> str:
    return inspect.getsource(func)


def _signature(func) -> str:
    """Parameter names, kinds and defaults, without annotations (they change form between releases)."""
    parameters = inspect.signature(func).parameters.values()
    return "(" + ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in parameters) + ")"


def test_the_documented_overrides_are_all_the_private_overrides():
    overridden = {
        name
        for name, value in vars(ReliabilityMixin).items()
        if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(GRPOTrainer, name)
    }
    assert overridden == set(PRIVATE_OVERRIDES), (
        "ReliabilityMixin overrides private Trainer/GRPOTrainer methods not listed (with the reason) in "
        f"PRIVATE_OVERRIDES, or lists ones it no longer overrides: {sorted(overridden ^ set(PRIVATE_OVERRIDES))}"
    )


@pytest.mark.parametrize("name", sorted(PRIVATE_OVERRIDES))
def test_overridden_private_method_exists_with_the_same_signature(name):
    owner, signature, reason = PRIVATE_OVERRIDES[name]
    cls = _class(owner)
    recheck = f"ReliabilityMixin.{name} (needed because {reason})"
    assert name in vars(cls), _upgrade_message(
        f"{owner}.{name} no longer exists (the override would be dead)", recheck
    )
    installed = _signature(vars(cls)[name])
    assert installed == signature, _upgrade_message(f"{owner}.{name}{installed} was {name}{signature}", recheck)
    assert _signature(vars(ReliabilityMixin)[name]) == signature  # the override matches what it pins


def test_the_overridden_methods_are_still_called_where_the_features_need_them():
    """Existing is not enough: each must still run at the point the feature relies on."""
    loop = _source(Trainer._run_epoch)
    assert loop.index("self._get_grad_norm(") < loop.index("self.optimizer.step()"), _upgrade_message(
        "Trainer._run_epoch no longer computes the gradient norm with _get_grad_norm before optimizer.step()",
        "the non-finite watchdog (nonfinite.py, ReliabilityMixin._get_grad_norm)",
    )
    scoring = _source(GRPOTrainer._generate_and_score_completions)
    assert "self._calculate_rewards(" in scoring, _upgrade_message(
        "GRPOTrainer._generate_and_score_completions no longer calls _calculate_rewards",
        "the all-ranks reward error (rewards.py, ReliabilityMixin._calculate_rewards)",
    )
    assert "gather(" in _source(GRPOTrainer._calculate_rewards), _upgrade_message(
        "GRPOTrainer._calculate_rewards no longer gathers the rewards across processes",
        "where every rank can raise a reward error together (RewardGuard.raise_if_failed)",
    )
    assert "self._save_checkpoint(" in _source(Trainer._maybe_log_save_evaluate), _upgrade_message(
        "Trainer._maybe_log_save_evaluate no longer saves through _save_checkpoint",
        "the rollout state in checkpoints (rollouts.py, ReliabilityMixin._save_checkpoint)",
    )
    assert "TRAINER_STATE_NAME" in _source(Trainer._save_checkpoint), _upgrade_message(
        "Trainer._save_checkpoint no longer writes trainer_state.json",
        "that the rollout state is written before the file that marks a checkpoint finished",
    )


def test_private_attributes_and_hook_order_the_features_read():
    """Private attributes read or written (not overridden) and the callback order RolloutResume relies on."""
    init = _source(GRPOTrainer.__init__)
    for attribute in ("self._step = 0", "self._buffered_inputs = None", "self._metrics = "):
        assert attribute in init, _upgrade_message(
            f"GRPOTrainer.__init__ no longer sets `{attribute}`", "rollouts.py and nonfinite.py"
        )
    assert "self._metrics[mode]" in _source(GRPOTrainer.log), _upgrade_message(
        "GRPOTrainer.log no longer merges self._metrics into the logs",
        "how NonFiniteWatchdog.on_step_end logs nonfinite_steps",
    )
    assert _signature(Trainer._get_output_dir) == "(self, trial)", _upgrade_message(
        "Trainer._get_output_dir changed", "rollouts.checkpoint_dir"
    )
    loop = _source(Trainer._inner_training_loop)
    assert loop.index("self._prepare_for_training(") < loop.index("on_train_begin("), _upgrade_message(
        "on_train_begin no longer runs after the checkpoint is loaded", "RolloutResume.on_train_begin"
    )
    assert "self._load_optimizer_and_scheduler(" in _source(Trainer._prepare_for_training)
    train = _source(Trainer.train)
    assert "get_last_checkpoint(args.output_dir)" in train, _upgrade_message(
        "Trainer.train resolves resume_from_checkpoint=True differently", "rollouts.resolve_checkpoint"
    )
